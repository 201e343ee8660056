"""Stale-SB selecting before loading: `OnlineBatchSelection.batch_preselection` and the sampler that applies it.

In an epoch between scoring epochs, a `CurriculumSampler` with a `BatchPreselection` yields only the kept
visits of each batch of its shard: exactly what `select_remembered` keeps of that batch in the step, drawn
from the same random stream, so the loader need not fetch the dropped examples.
"""

from __future__ import annotations

import pytest
import torch
from selection_helpers import FixedPlan

from lightning_curricula import CurriculumSampler, OnlineBatchSelection

SIZE = 21
BATCH = 4


def remembering(**options: object) -> OnlineBatchSelection:
    """A Stale-SB callback in epoch 1 with a remembered score for every one of ``SIZE`` ids."""
    selection = OnlineBatchSelection(keep=0.5, rescore_every=2, **options)  # type: ignore[arg-type]
    scores = torch.rand(SIZE, generator=torch.Generator().manual_seed(0))
    selection.select(scores, index=torch.arange(SIZE))  # epoch 0 scores every example
    selection.epoch = 1
    return selection


def twin(selection: OnlineBatchSelection) -> OnlineBatchSelection:
    """A callback in the same state, to replay in the step what the loader selected."""
    other = OnlineBatchSelection(
        keep=selection.keep,
        method=selection.method,
        beta=selection.beta,
        unbiased=selection.unbiased,
        rescore_every=selection.rescore_every,
        select_before_loading=False,
    )
    other.load_state_dict(selection.state_dict())
    other.epoch = selection.epoch
    return other


@pytest.mark.parametrize(
    "options", [{"method": "top_k"}, {"method": "percentile", "beta": 2.0, "unbiased": True}, {"method": "random"}]
)
def test_the_sampler_yields_what_the_step_would_keep_of_each_batch(options: dict[str, object]) -> None:
    selection = remembering(**options)
    in_step = twin(selection)
    preselection = selection.batch_preselection(1, SIZE, BATCH)
    assert preselection is not None
    assert selection.preselected
    sampler = CurriculumSampler(range(SIZE), seed=5, batch_preselection=preselection)
    visits = list(sampler)
    assert len(visits) == len(sampler) == 5 * 2 + 1  # five batches of 4 keep 2 each, the last of 1 keeps 1

    shard = [index for index, _ in CurriculumSampler(range(SIZE), seed=5)]
    expected = []
    for start in range(0, SIZE, BATCH):
        ids = torch.tensor(shard[start : start + BATCH])
        kept = in_step.select_remembered(ids)
        assert kept is not None
        expected += [(int(ids[p]), float(w)) for p, w in zip(kept.positions, kept.weights, strict=True)]
    assert [index for index, _ in visits] == [index for index, _ in expected]
    assert all(weight == 1.0 for _, weight in visits)  # the plan's weights; selection weights wait for the step
    loaded = torch.tensor([index for index, _ in visits])
    again = selection.select_remembered(loaded)  # the step: the whole batch, with the loader's weights
    assert again is not None
    assert again.positions.tolist() == list(range(loaded.numel()))
    torch.testing.assert_close(again.weights, torch.tensor([weight for _, weight in expected]))
    assert selection.state_dict()["epoch"] == in_step.state_dict()["epoch"]  # the same counts and random calls
    assert selection.calls == in_step.calls


def test_plan_weights_pass_through_and_drop_last_drops_the_short_batch() -> None:
    selection = remembering()
    preselection = selection.batch_preselection(1, SIZE, BATCH, drop_last=True)
    assert preselection is not None
    assert preselection.kept_per_batch == 2
    assert preselection.kept_length(SIZE) == 10
    policy = FixedPlan(range(SIZE - 1, -1, -1), weights=[1.0 + i for i in range(SIZE)])  # weight 1 + position
    visits = list(CurriculumSampler(range(SIZE), policy, batch_preselection=preselection))
    assert len(visits) == 10  # the last batch of one is dropped
    assert all(weight == SIZE - index for index, weight in visits)
    batches = [(SIZE - 1 - index) // BATCH for index, _ in visits]  # the batch of each visit's plan position
    assert batches == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # two of each batch of four; the one at position 20 dropped


def test_only_epochs_between_scoring_epochs_with_every_score_known_are_preselected() -> None:
    selection = remembering()
    assert selection.batch_preselection(2, SIZE, BATCH) is None  # a scoring epoch
    assert not selection.preselected
    assert selection.batch_preselection(1, SIZE + 1, BATCH) is None  # an example never scored
    selection.remember(torch.tensor([3]), torch.tensor([float("nan")]))
    assert selection.batch_preselection(1, SIZE, BATCH) is None  # a NaN score is no score
    off = remembering(select_before_loading=False)
    assert off.batch_preselection(1, SIZE, BATCH) is None
    assert OnlineBatchSelection(keep=0.5).batch_preselection(1, SIZE, BATCH) is None  # nothing remembered


def test_a_preselected_epoch_refuses_a_second_selection() -> None:
    selection = remembering()
    assert selection.batch_preselection(1, SIZE, BATCH) is not None
    with pytest.raises(RuntimeError, match="selected by the train loader before loading"):
        selection.select(torch.rand(4), index=torch.arange(4))
    with pytest.raises(ValueError, match="with keep=0.5, not keep=0.25"):
        selection.select_remembered(torch.arange(4), keep=0.25)
    selection.epoch = 2  # the next epoch scores again
    selection.select(torch.rand(4), index=torch.arange(4))


def test_bad_options_fail_early() -> None:
    with pytest.raises(ValueError, match="select_before_loading must be True or False, got 'yes'"):
        OnlineBatchSelection(keep=0.5, rescore_every=2, select_before_loading="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        remembering().batch_preselection(1, SIZE, 0)

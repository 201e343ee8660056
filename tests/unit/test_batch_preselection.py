"""Stale-SB selecting before loading: `OnlineBatchSelection.batch_preselection` and the sampler that applies it.

In an epoch between scoring epochs, a `CurriculumSampler` with a `BatchPreselection` yields only the kept
visits of each batch of its shard: exactly what `select_remembered` keeps of that batch in the step, drawn
from the same random stream, so the loader need not fetch the dropped examples.
"""

from __future__ import annotations

import pytest
import torch
from selection_helpers import FixedPlan
from torch import Tensor

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
    kept = preselection.kept_per_batch
    for start in range(0, len(visits), kept):  # the steps: each whole batch, with the weights the loader drew
        loaded = torch.tensor([index for index, _ in visits[start : start + kept]])
        again = selection.select_remembered(loaded)
        assert again is not None
        assert again.positions.tolist() == list(range(loaded.numel()))
        torch.testing.assert_close(
            again.weights, torch.tensor([weight for _, weight in expected[start : start + kept]])
        )
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
    assert selection.batch_preselection(1, SIZE, BATCH) is not None  # epoch 1 selects by the scores it began with
    assert selection.batch_preselection(3, SIZE, BATCH) is None  # from the next one on: a NaN score is no score
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


# A plan that visits ids 3, 0 and 1 twice, as importance sampling (draws with replacement) does.
REPEATS = [0, 1, 2, 3, 3, 7, 0, 1]


def loaded_batches(selection: OnlineBatchSelection, plan: list[int]) -> list[Tensor]:
    """The ids of each batch the loader loads in epoch 1, all fetched before the first step (a look-ahead)."""
    preselection = selection.batch_preselection(1, SIZE, BATCH)
    assert preselection is not None
    visits = [index for index, _ in CurriculumSampler(range(SIZE), FixedPlan(plan), batch_preselection=preselection)]
    kept = preselection.kept_per_batch
    return [torch.tensor(visits[start : start + kept]) for start in range(0, len(visits), kept)]


def test_each_visit_gets_the_weights_drawn_for_it_when_ids_repeat_and_the_loader_runs_ahead() -> None:
    selection = remembering(method="percentile", beta=2.0, unbiased=True)
    in_step = twin(selection)
    first, second = loaded_batches(selection, REPEATS)  # the loader fetched both batches before the first step
    assert first.tolist() == [1, 3]

    # Selecting in the step: the first batch keeps ids 1 and 3 with these weights.
    want_first = in_step.select_remembered(torch.tensor(REPEATS[:4]))
    want_second = in_step.select_remembered(torch.tensor(REPEATS[4:]))
    assert want_first is not None
    assert want_second is not None
    torch.testing.assert_close(want_first.weights, torch.tensor([0.5, 1.75]))
    got_first, got_second = selection.select_remembered(first), selection.select_remembered(second)
    assert got_first is not None
    assert got_second is not None
    # The same function of the same scores and random draws: equal bit for bit, not the second visit's weights.
    assert torch.equal(got_first.weights, want_first.weights), got_first.weights
    assert torch.equal(got_second.weights, want_second.weights)
    assert selection.state_dict()["epoch"] == in_step.state_dict()["epoch"]
    assert selection.calls == in_step.calls


def test_a_loader_iterated_again_selects_the_same_batches_and_counts_only_what_the_step_takes() -> None:
    # Lightning iterates a re-created loader twice at an epoch start when it has workers: the first iterator's
    # prefetched batches are dropped. The second iteration must draw what the first drew, counted once.
    selection = remembering(method="random")
    in_step = twin(selection)
    preselection = selection.batch_preselection(1, SIZE, BATCH)
    assert preselection is not None
    sampler = CurriculumSampler(range(SIZE), seed=5, batch_preselection=preselection)
    abandoned = iter(sampler)
    ahead = [next(abandoned) for _ in range(2 * preselection.kept_per_batch)]  # two batches, never trained on
    visits = list(sampler)
    assert visits[: len(ahead)] == ahead
    assert selection.calls == in_step.calls  # selecting before loading draws, the step counts
    shard = [index for index, _ in CurriculumSampler(range(SIZE), seed=5)]
    for number, start in enumerate(range(0, SIZE, BATCH)):
        kept = in_step.select_remembered(torch.tensor(shard[start : start + BATCH]))
        assert kept is not None
        loaded = torch.tensor([index for index, _ in visits[2 * number : 2 * number + kept.positions.numel()]])
        assert loaded.tolist() == torch.tensor(shard[start : start + BATCH])[kept.positions].tolist()
        assert selection.select_remembered(loaded) is not None
    assert selection.calls == in_step.calls == 1 + 6  # epoch 0's call and six batches, on both
    assert selection.state_dict()["epoch"] == in_step.state_dict()["epoch"]


def test_a_step_given_other_ids_than_the_loader_selected_fails_naming_both() -> None:
    selection = remembering()
    first, _ = loaded_batches(selection, REPEATS)
    assert first.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"ids \[1, 0\], which are none of the batches the loader selected .*\[0, 1\]"):
        selection.select_remembered(first.flip(0))
    assert selection.select_remembered(first) is not None  # the failed call took nothing
    with pytest.raises(ValueError, match=r"ids \[0, 1\], which are none of the batches the loader selected"):
        selection.select_remembered(first)  # taken already: the loader selected it once


def test_a_new_epoch_or_a_restored_state_forgets_the_batches_the_loader_fetched_ahead() -> None:
    selection = remembering()
    first, _ = loaded_batches(selection, REPEATS)
    selection.load_state_dict(selection.state_dict())  # a resumed run's loader selects its batches again
    with pytest.raises(ValueError, match="the batches the loader selected"):
        selection.select_remembered(first)
    first, _ = loaded_batches(selection, REPEATS)
    assert selection.batch_preselection(2, SIZE, BATCH) is None  # the next epoch's loader, a scoring epoch
    selection.epoch = 3
    assert selection.batch_preselection(3, SIZE, BATCH) is not None
    with pytest.raises(ValueError, match="the batches the loader selected"):
        selection.select_remembered(first)


def test_a_score_remembered_in_the_epoch_counts_from_the_next_one_so_a_look_ahead_selects_the_same() -> None:
    # The step remembers the first batch's training losses before it selects the second batch, which visits
    # ids 0 and 1 again; the loader selected the second batch before the first was trained on.
    selection = remembering()  # top-k; remembered scores of ids 0, 1, 2, 3, 7: 0.50, 0.77, 0.09, 0.13, 0.90
    in_step = twin(selection)
    batches = loaded_batches(selection, REPEATS)
    assert [batch.tolist() for batch in batches] == [[0, 1], [7, 1]]
    for loaded, ids in zip(batches, (torch.tensor(REPEATS[:4]), torch.tensor(REPEATS[4:])), strict=True):
        kept = in_step.select_remembered(ids)
        assert kept is not None
        assert ids[kept.positions].tolist() == loaded.tolist()  # not [7, 0], by the scores remembered below
        assert selection.select_remembered(loaded) is not None
        if ids[0] == 0:  # the first batch's training losses reverse the order of ids 0 and 1
            for callback in (selection, in_step):
                callback.remember(loaded, torch.tensor([100.0, -1.0]))
    selection.epoch = in_step.epoch = 3  # the next epoch between scoring epochs selects by them
    for callback in (selection, in_step):
        kept = callback.select_remembered(torch.tensor(REPEATS[:4]))
        assert kept is not None
        assert kept.positions.tolist() == [0, 3]  # id 0 (100) and id 3 (0.13) above id 1 (-1)

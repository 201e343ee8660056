"""`OnlineBatchSelection` with remembered scores (Stale-SB): which epochs score, what is remembered, the counts."""

from __future__ import annotations

import pytest
import torch

from lightning_curricula import OnlineBatchSelection

# Rows of the per-epoch counters in the state: scored, kept, scored tokens, kept tokens, calls, recalled, kept recalled.


def stale(**options: object) -> OnlineBatchSelection:
    return OnlineBatchSelection(keep=0.5, rescore_every=2, **options)  # type: ignore[arg-type]


def scoring_epochs(selection: OnlineBatchSelection, epochs: int) -> list[bool]:
    scoring = []
    for epoch in range(epochs):
        selection.epoch = epoch
        scoring.append(selection.scoring_epoch)
    return scoring


def test_only_every_rescore_every_th_epoch_scores() -> None:
    assert scoring_epochs(stale(), 5) == [True, False, True, False, True]
    assert scoring_epochs(OnlineBatchSelection(keep=0.5), 3) == [True, True, True]
    once = OnlineBatchSelection(keep=0.5, rescore_every=None)
    assert scoring_epochs(once, 4) == [True, False, False, False]
    assert once.remembers_scores
    assert not OnlineBatchSelection(keep=0.5).remembers_scores


def test_a_stale_epoch_selects_the_top_remembered_scores_without_scoring() -> None:
    selection = stale()
    index = torch.tensor([4, 0, 2, 1])
    assert selection.select_remembered(index) is None  # epoch 0 scores
    selection.select(torch.tensor([0.1, 0.9, 0.5, 0.3]), index=index)
    selection.epoch = 1
    kept = selection.select_remembered(torch.tensor([2, 1, 0, 4]))
    assert kept is not None
    assert kept.positions.tolist() == [0, 2]  # ids 2 (0.5) and 0 (0.9)
    # The kept examples' training losses replace their remembered scores, from the next epoch on: every
    # selection of an epoch reads the scores it began with (a loader selecting ahead reads the same).
    selection.remember(torch.tensor([2, 0]), torch.tensor([0.0, 0.05]))
    again = selection.select_remembered(torch.tensor([2, 1, 0, 4]))
    assert again is not None
    assert again.positions.tolist() == [0, 2]
    selection.epoch = 3
    kept = selection.select_remembered(torch.tensor([2, 1, 0, 4]))
    assert kept is not None
    assert kept.positions.tolist() == [1, 3]  # ids 1 (0.3) and 4 (0.1)
    assert selection.state_dict()["epoch"] == [4, 2, 0, 0, 4, 12, 6]


@pytest.mark.parametrize(
    "index", [torch.tensor([0, 1, 7]), torch.tensor([0, 3])], ids=["beyond the table", "never scored"]
)
def test_an_id_without_a_remembered_score_asks_for_a_forward(index: torch.Tensor) -> None:
    selection = stale()
    selection.select(torch.tensor([0.1, 0.2, float("nan"), 0.4]), index=torch.tensor([0, 1, 2, 4]))
    selection.epoch = 1
    assert selection.select_remembered(index) is None
    assert selection.select_remembered(torch.tensor([0, 2])) is None  # a NaN score is no score
    assert selection.select_remembered(torch.tensor([0, 4])) is not None


def test_without_rescoring_nothing_is_remembered() -> None:
    selection = OnlineBatchSelection(keep=0.5)
    selection.select(torch.tensor([0.1, 0.9]), index=torch.tensor([0, 1]))
    selection.remember(torch.tensor([0]), torch.tensor([3.0]))
    selection.epoch = 1
    assert selection.select_remembered(torch.tensor([0, 1])) is None
    assert selection.state_dict()["remembered_scores"].numel() == 0


def test_the_remembered_scores_are_in_the_state() -> None:
    selection = stale(method="percentile", seed=3)
    selection.select(torch.tensor([0.1, 0.9, 0.5]), index=torch.tensor([0, 2, 1]))
    restored = stale(method="percentile", seed=3)
    restored.load_state_dict(selection.state_dict())
    selection.epoch = restored.epoch = 1
    first = selection.select_remembered(torch.tensor([1, 2, 0]))
    second = restored.select_remembered(torch.tensor([1, 2, 0]))
    assert first is not None
    assert second is not None
    assert torch.equal(first.positions, second.positions)
    torch.testing.assert_close(restored.state_dict()["remembered_scores"], torch.tensor([0.1, 0.5, 0.9]))


def test_a_version_1_state_loads_with_empty_new_counters() -> None:
    state = {"version": 1, "keep": 0.5, "method": "top_k", "seed": 0, "calls": 3}
    state |= {"totals": [12, 6, 0, 0, 3], "epoch": [0, 0, 0, 0, 0]}
    selection = OnlineBatchSelection(keep=0.5)
    selection.load_state_dict(state)
    assert selection.state_dict()["totals"] == [12, 6, 0, 0, 3, 0, 0]
    assert selection.calls == 3
    with pytest.raises(ValueError, match="state has version 7; this release reads versions 1 and 2"):
        selection.load_state_dict(state | {"version": 7})


@pytest.mark.parametrize("value", [0, -2, 1.5, True])
def test_rescore_every_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(
        ValueError, match=rf"rescore_every must be an integer >= 1 or None \(the first epoch only\), got {value!r}"
    ):
        OnlineBatchSelection(keep=0.5, rescore_every=value)  # type: ignore[arg-type]


def test_bad_ids_and_shapes_fail_naming_them() -> None:
    selection = stale()
    with pytest.raises(ValueError, match=r"scores have shape \(2,\) but index has \(3,\)"):
        selection.remember(torch.tensor([0, 1, 2]), torch.ones(2))
    with pytest.raises(ValueError, match="Example ids must be >= 0 to be remembered, got -1"):
        selection.remember(torch.tensor([0, -1]), torch.ones(2))
    with pytest.raises(ValueError, match="Example id 1073741824 is too large to be remembered"):
        selection.remember(torch.tensor([2**30]), torch.ones(1))
    with pytest.raises(ValueError, match=r"index has shape \(1, 2\), expected \(batch_size,\)"):
        selection.select(torch.ones(2), index=torch.tensor([[0, 1]]))

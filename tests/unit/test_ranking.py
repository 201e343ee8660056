"""Difficulty direction of every ranked signal, and deterministic selection of ids."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_curricula import HARDER_WHEN_HIGHER, TrainingDynamics, difficulty_scores, select_indices

NAN = math.nan
INF = math.inf

# For every ranked signal: a value of an easy example and a value of a hard one, chosen by what the signal
# means (not by HARDER_WHEN_HIGHER), so a flipped direction fails.
EASY_AND_HARD = {
    "loss": (0.05, 2.3),
    "loss_mean": (0.1, 1.9),
    "loss_ema": (0.2, 1.5),
    "el2n": (0.01, 1.2),
    "margin": (4.0, -2.0),
    "aum": (3.0, -0.5),
    "confidence": (0.95, 0.1),
    "variability": (0.01, 0.4),
    "correctness": (1.0, 1 / 3),
    "forgetting_events": (0.0, 3.0),
}


def test_every_ranked_signal_has_a_direction_test() -> None:
    assert set(EASY_AND_HARD) == set(HARDER_WHEN_HIGHER)


@pytest.mark.parametrize("name", sorted(EASY_AND_HARD))
def test_harder_examples_score_higher(name: str) -> None:
    easy, hard = EASY_AND_HARD[name]
    signals = {name: torch.tensor([easy, hard, NAN])}
    if name == "forgetting_events":  # both learned at some point: the counts rank them
        signals["correctness"] = torch.tensor([1.0, 0.5, NAN])
    scores = difficulty_scores(signals, name)
    assert scores.dtype == torch.float32
    assert scores[1] > scores[0]
    assert math.isnan(scores[2].item())
    assert select_indices(scores, k=1).tolist() == [1]
    assert select_indices(scores, k=1, largest=False).tolist() == [0]


@pytest.mark.parametrize("name", ["margin", "aum", "confidence", "correctness"])
def test_higher_is_easier_signals_are_negated(name: str) -> None:
    values = torch.tensor([0.25, -1.0, 2.0])
    assert difficulty_scores({name: values}, name).tolist() == [-0.25, 1.0, -2.0]


def test_integer_signals_become_float() -> None:
    scores = difficulty_scores({"forgetting_events": torch.tensor([0, 2], dtype=torch.int32)}, "forgetting_events")
    assert scores.dtype == torch.float32
    assert scores.tolist() == [0.0, 2.0]


def test_forgetting_never_learned_is_infinite_and_never_seen_is_nan() -> None:
    signals = {
        "forgetting_events": torch.tensor([0, 2, 0, 0, 1], dtype=torch.int32),
        # never learned, learned and forgotten twice, always learned, never seen, learned once of two epochs
        "correctness": torch.tensor([0.0, 0.5, 1.0, NAN, 0.5]),
    }
    scores = difficulty_scores(signals, "forgetting_events")
    assert scores[0].item() == INF
    assert scores[1].item() == 2.0
    assert scores[2].item() == 0.0
    assert math.isnan(scores[3].item())
    assert scores[4].item() == 1.0
    # The hardest first: never learned, then the most forgotten; the unseen example is never selected.
    assert select_indices(scores, k=5).tolist() == [0, 1, 4, 2]
    assert select_indices(scores, k=5, largest=False).tolist() == [2, 4, 1, 0]


def test_forgetting_ranking_of_a_fresh_tracker_selects_nothing() -> None:
    dynamics = TrainingDynamics(num_examples=3)
    assert dynamics.select("loss", k=3).tolist() == []


def test_unknown_signal_raises_with_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"Unknown signal 'hardness'; ranked signals are \[.*'el2n'.*\]"):
        difficulty_scores({"hardness": torch.zeros(2)}, "hardness")


def test_untracked_signal_raises_with_the_tracked_names() -> None:
    with pytest.raises(ValueError, match=r"Signal 'margin' is not tracked; tracked signals are \['loss'\].*logits"):
        difficulty_scores({"loss": torch.zeros(2)}, "margin")


# ------------------------------------------------------------------------------------------------ select


def test_select_largest_ties_broken_by_lower_id() -> None:
    scores = torch.tensor([1.0, 3.0, 2.0, 3.0, 1.0, 3.0])
    assert select_indices(scores, k=4).tolist() == [1, 3, 5, 2]
    assert select_indices(scores, k=2).tolist() == [1, 3]


def test_select_smallest_ties_broken_by_lower_id() -> None:
    scores = torch.tensor([1.0, 3.0, 2.0, 3.0, 1.0, 3.0])
    assert select_indices(scores, k=3, largest=False).tolist() == [0, 4, 2]


def test_select_with_all_equal_scores_is_the_first_ids() -> None:
    assert select_indices(torch.zeros(10), k=4).tolist() == [0, 1, 2, 3]
    assert select_indices(torch.zeros(10), k=4, largest=False).tolist() == [0, 1, 2, 3]


def test_select_excludes_nan_but_keeps_infinities() -> None:
    scores = torch.tensor([NAN, 0.5, INF, NAN, -INF, 0.1])
    assert select_indices(scores, k=6).tolist() == [2, 1, 5, 4]
    assert select_indices(scores, k=6, largest=False).tolist() == [4, 5, 1, 2]
    assert select_indices(torch.full((4,), NAN), k=2).tolist() == []


def test_select_returns_int64_ids() -> None:
    result = select_indices(torch.tensor([0.3, 0.1]), k=1)
    assert result.dtype == torch.int64
    assert result.tolist() == [0]


def test_select_fraction_zero_and_one() -> None:
    scores = torch.tensor([0.4, NAN, 0.9, 0.1, 0.5])
    assert select_indices(scores, fraction=0.0).tolist() == []
    # fraction 1 asks for all five ids; the NaN one is never selected.
    assert select_indices(scores, fraction=1.0).tolist() == [2, 4, 0, 3]
    assert select_indices(scores, fraction=1.0, largest=False).tolist() == [3, 0, 4, 2]


def test_select_fraction_rounds_down() -> None:
    scores = torch.arange(5.0)
    assert select_indices(scores, fraction=0.5).tolist() == [4, 3]  # 2.5 -> 2
    assert select_indices(scores, fraction=0.19).tolist() == []  # 0.95 -> 0


def test_select_k_zero_and_k_beyond_n() -> None:
    scores = torch.tensor([0.2, 0.8])
    assert select_indices(scores, k=0).tolist() == []
    assert select_indices(scores, k=10).tolist() == [1, 0]


def test_select_needs_exactly_one_of_k_and_fraction() -> None:
    with pytest.raises(ValueError, match=r"Give exactly one of k and fraction, got k=None and fraction=None"):
        select_indices(torch.zeros(3))
    with pytest.raises(ValueError, match=r"Give exactly one of k and fraction, got k=1 and fraction=0.5"):
        select_indices(torch.zeros(3), k=1, fraction=0.5)


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_select_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ValueError, match=rf"fraction must be in \[0, 1\], got {fraction}"):
        select_indices(torch.zeros(3), fraction=fraction)


def test_select_negative_k() -> None:
    with pytest.raises(ValueError, match=r"k must be non-negative, got -1"):
        select_indices(torch.zeros(3), k=-1)

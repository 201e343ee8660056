"""SelfPaced admits a growing set for every signal, including those where higher is easier."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from selection_helpers import epoch_context, one_thread, tracked_run  # noqa: F401

from lightning_curricula import HARDER_WHEN_HIGHER, SelfPaced, difficulty_scores

SIGNALS = sorted(HARDER_WHEN_HIGHER)


def paced_sets(signal: str, logits: torch.Tensor, targets: torch.Tensor, num_epochs: int) -> list[set[int]]:
    return paced_run(signal, logits, targets, num_epochs)[0]


def paced_run(signal: str, logits: torch.Tensor, targets: torch.Tensor, num_epochs: int) -> tuple[list[set[int]], int]:
    """The admitted sets after the warm-up epoch, and how many examples have a finite score."""
    run = tracked_run(SelfPaced(signal, growth=1.3), logits, targets, num_epochs=num_epochs)
    finite = int(difficulty_scores(run.dynamics.signals(), signal).isfinite().sum())
    return [set(plan.indices.tolist()) for plan in run.plans[1:]], finite


@pytest.mark.parametrize("signal", SIGNALS)
def test_admitted_set_grows_for_every_signal(signal: str) -> None:
    # N = 20 as in the issue: with confidence the old threshold (negative median * growth) trained 10, 6, 2, 2, 2.
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 3, generator=generator) * 2
    targets = torch.randint(3, (20,), generator=generator)
    logits[torch.arange(12), targets[:12]] += 3.0  # most examples correct: correctness's median is its easiest score
    sets, finite = paced_run(signal, logits, targets, num_epochs=8)
    assert all(before <= after for before, after in itertools.pairwise(sets)), [len(s) for s in sets]
    # It grows, unless every example with a finite score is in from the start (never-learned ones are
    # infinitely forgotten, so they never pass a threshold).
    assert len(sets[-1]) > len(sets[0]) or len(sets[0]) >= finite, [len(s) for s in sets]


@pytest.mark.parametrize("signal", SIGNALS)
@settings(max_examples=25, deadline=None)
@given(data=st.data(), num_examples=st.integers(2, 16))
def test_admitted_set_never_shrinks(signal: str, data: st.DataObject, num_examples: int) -> None:
    values = st.lists(st.integers(-3, 3), min_size=3, max_size=3)
    logits = torch.tensor(data.draw(st.lists(values, min_size=num_examples, max_size=num_examples)), dtype=torch.float)
    targets = torch.tensor(data.draw(st.lists(st.integers(0, 2), min_size=num_examples, max_size=num_examples)))
    sets = paced_sets(signal, logits, targets, num_epochs=6)
    assert all(before <= after for before, after in itertools.pairwise(sets)), [len(s) for s in sets]


def test_median_at_the_easiest_score_reaches_the_next_one_a_step_later() -> None:
    correctness = torch.tensor([1.0, 1.0, 1.0, 0.0])  # the median is the easiest score
    sizes = [
        len(SelfPaced("correctness", min_fraction=0.25).plan(epoch_context(e, 4, {"correctness": correctness})))
        for e in (1, 2)
    ]
    assert sizes == [3, 4]


def test_scores_equal_up_to_float_noise_count_as_ties() -> None:
    # Found by the property test: 1 / (2 + e) from two different logit rows differs in the last bits, and the
    # admitted set went 2, 2, 3, 2, 2 with confidence.
    logits = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 2.0], [-2.0, -1.0, -2.0]])
    sets = paced_sets("confidence", logits, torch.zeros(3, dtype=torch.long), num_epochs=6)
    assert [len(admitted) for admitted in sets] == [2, 3, 3, 3, 3]

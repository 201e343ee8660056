"""`ScoreCurriculum`: a curriculum ranked by given scores, sized exactly like `Curriculum`."""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import pytest
import torch
from selection_helpers import epoch_context, one_thread  # noqa: F401

from lightning_curricula import Curriculum, CurriculumSampler, ScoreCurriculum
from lightning_curricula.policies import ScoreCurriculum as FromPolicies


def test_exported_from_both_namespaces() -> None:
    assert FromPolicies is ScoreCurriculum


@pytest.mark.parametrize("pacing", ["linear", "root", "geometric", "exponential", "step"])
@pytest.mark.parametrize(("start", "saturation", "warmup"), [(0.2, 0.8, 1), (0.3, 1.0, 1), (0.25, 0.5, 2)])
def test_sizes_equal_curriculum_for_every_size(pacing: str, start: float, saturation: float, warmup: int) -> None:
    # The recipe's copy rounded ceil(share * N) without the tolerance: 61 instead of 60 of 100.
    num_epochs = 7
    learned = Curriculum(pacing=pacing, start=start, saturation=saturation, warmup_epochs=warmup)
    given = ScoreCurriculum(pacing=pacing, start=start, saturation=saturation, warmup_epochs=warmup)
    for n in range(1, 201):
        for epoch in range(num_epochs):
            assert given.epoch_size(n, epoch, num_epochs) == learned.epoch_size(n, epoch, num_epochs), (n, epoch)


def test_plans_the_announced_size_easiest_first() -> None:
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    policy = ScoreCurriculum(scores=scores, start=0.3, saturation=1.0)
    for epoch in range(4):
        size = policy.epoch_size(10, epoch, 4)
        plan = policy.plan(epoch_context(epoch, 10, num_epochs=4))
        assert len(plan) == size
        assert sorted(plan.indices.tolist()) == sorted(torch.argsort(scores)[:size].tolist())
        assert bool((plan.weights == 1).all())


@pytest.mark.parametrize("order", ["easy_to_hard", "hard_to_easy", "random"])
def test_ties_broken_by_a_seeded_permutation_and_subsets_nested(order: Any) -> None:
    scores = torch.tensor([1.0, 0.0] * 20)  # many ties
    policy = ScoreCurriculum(scores=scores, order=order, start=0.1, saturation=1.0)
    subsets = []
    for epoch in range(6):
        plan = policy.plan(epoch_context(epoch, 40, num_epochs=6, seed=3))
        subsets.append(set(plan.indices.tolist()))
    assert all(a <= b for a, b in itertools.pairwise(subsets))
    assert len(subsets[0]) < len(subsets[-1]) == 40  # the last epoch is at progress 1
    first = subsets[1]
    if order != "random":
        wanted = 0.0 if order == "easy_to_hard" else 1.0
        assert all(scores[i] == wanted for i in first)
    assert first != set(range(min(first), min(first) + len(first)))  # not the lowest ids
    other_seed = policy.plan(epoch_context(1, 40, num_epochs=6, seed=4))
    assert set(other_seed.indices.tolist()) != first


def test_keep_is_a_fixed_share_needing_no_epochs() -> None:
    policy = ScoreCurriculum(scores=torch.arange(10.0), keep=0.3)
    assert not policy.needs_num_epochs
    assert not policy.varies_length
    policy.validate(10, None)
    for epoch in range(3):
        assert sorted(policy.plan(epoch_context(epoch, 10)).indices.tolist()) == [0, 1, 2]
    sampler = CurriculumSampler(range(10), policy)  # no tracker needed
    assert sorted(index for index, _ in sampler) == [0, 1, 2]


def test_nan_scores_rank_last() -> None:
    scores = torch.tensor([math.nan, 2.0, 1.0, math.nan])
    for order in ("easy_to_hard", "hard_to_easy"):
        plan = ScoreCurriculum(scores=scores, order=order, keep=0.5).plan(epoch_context(0, 4))  # type: ignore[arg-type]
        assert sorted(plan.indices.tolist()) == [1, 2]


def test_with_scores_keeps_every_option() -> None:
    policy = ScoreCurriculum("length", order="hard_to_easy", pacing="root", start=0.4, saturation=0.6, warmup_epochs=1)
    bound = policy.with_scores(torch.tensor([1.0, 2.0, 3.0]))
    assert policy.scores is None
    assert bound.scores is not None
    assert bound.scores.tolist() == [1.0, 2.0, 3.0]
    for name in ("score", "order", "pacing", "start", "saturation", "keep", "warmup_epochs"):
        assert getattr(bound, name) == getattr(policy, name)
    assert [bound.epoch_size(50, e, 5) for e in range(5)] == [policy.epoch_size(50, e, 5) for e in range(5)]


@pytest.mark.parametrize(
    ("build", "args", "message"),
    [
        (lambda: ScoreCurriculum(), (10, 5), "has no scores: pass scores= or use with_scores()"),
        (lambda: ScoreCurriculum(scores=torch.zeros(3)), (10, 5), "scores has 3 entries, the dataset has 10"),
        (lambda: ScoreCurriculum(scores=torch.zeros(10)), (10, None), "needs num_epochs"),
    ],
)
def test_validate(build: Any, args: tuple[int, int | None], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build().validate(*args)


@pytest.mark.parametrize(
    ("build", "quoted"),
    [
        (lambda: ScoreCurriculum(keep=0.0), "keep must be in (0, 1], got 0.0"),
        (lambda: ScoreCurriculum(warmup_epochs=-1), "warmup_epochs must be >= 0, got -1"),
        (lambda: ScoreCurriculum(order="sideways"), "got 'sideways'"),
        (lambda: ScoreCurriculum(scores=torch.zeros(2, 2)), "shape (N,); got shape (2, 2)"),
        (lambda: ScoreCurriculum(pacing="cubic"), "Unknown pacing 'cubic'"),
    ],
)
def test_constructor_validation(build: Any, quoted: str) -> None:
    with pytest.raises(ValueError, match=re.escape(quoted)):
        build()

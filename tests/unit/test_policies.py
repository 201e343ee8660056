"""Selection policies: valid ids, exact budgets, warm-ups, each policy's choice by hand, ties, determinism.

Property tests run every policy through `selection_helpers.tracked_run`: a fresh `CurriculumSampler`
per epoch and the real `TrainingDynamics` hooks, so each plan is planned from the tables that the
previous plans produced.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from selection_helpers import epoch_context, one_thread, tracked_run  # noqa: F401
from torch import Tensor

from lightning_curricula import (
    POLICIES,
    Bandit,
    Curriculum,
    CurriculumSampler,
    FullData,
    ImportanceSampling,
    InfoBatch,
    NoiseAware,
    Plan,
    Policy,
    RandomSubset,
    RandomTwin,
    ScoreCurriculum,
    SelfPaced,
    StaticPruning,
)
from lightning_curricula.policies.selection import sampling_probabilities

NUM_CLASSES = 3


def catalog(num_examples: int) -> dict[str, Policy]:
    """One or more configurations of every policy, for a dataset of ``num_examples``."""
    labels = torch.arange(num_examples) % NUM_CLASSES
    return {
        "full": FullData(),
        "random": RandomSubset(0.4),
        "random_static": RandomSubset(0.4, static=True),
        "curriculum": Curriculum(start=0.3, saturation=0.7),
        "curriculum_hard_to_easy": Curriculum("el2n", order="hard_to_easy", pacing="step", start=0.5),
        "curriculum_balanced": Curriculum("margin", order="balanced", pacing="geometric", warmup_epochs=2),
        "curriculum_random": Curriculum(order="random", pacing="root"),
        "score_curriculum": ScoreCurriculum(scores=torch.arange(num_examples) % 4 * 1.0, start=0.3),
        "score_keep": ScoreCurriculum(scores=-torch.arange(num_examples) * 1.0, order="hard_to_easy", keep=0.4),
        "self_paced": SelfPaced(growth=1.5),
        "static_hard": StaticPruning("el2n", keep=0.5),
        "static_easy": StaticPruning("loss", keep=0.3, mode="easy", score_epochs=2),
        "static_band": StaticPruning("loss", keep=0.5, mode="band", band_offset=0.5),
        "static_balanced": StaticPruning("margin", keep=0.3, class_balanced=True, labels=labels, min_per_class=2),
        "infobatch": InfoBatch(0.5, anneal=0.2),
        "infobatch_budget": InfoBatch(budget=0.75, anneal=0.25),
        "bandit_ucb": Bandit(0.3),
        "bandit_epsilon": Bandit(0.5, strategy="epsilon_greedy", signal="forgetting_events", epsilon=0.5),
        "importance": ImportanceSampling(0.5),
        "twin": RandomTwin(Curriculum(start=0.3)),
        "noise_demote": NoiseAware(StaticPruning("el2n", keep=0.5)),
        "noise_drop": NoiseAware(Curriculum(start=0.5), mode="drop", min_forgetting=1),
    }


def test_catalog_covers_every_policy() -> None:
    classes = {type(policy) for policy in catalog(10).values()}
    assert set(POLICIES.values()) | {RandomTwin, NoiseAware, ScoreCurriculum} <= classes


def classification_data(draw: st.DrawFn, num_examples: int) -> tuple[Tensor, Tensor]:
    """Small integer logits (many ties in losses and margins) and targets."""
    values = st.integers(-2, 2)
    logits = draw(
        st.lists(
            st.lists(values, min_size=NUM_CLASSES, max_size=NUM_CLASSES), min_size=num_examples, max_size=num_examples
        )
    )
    targets = draw(st.lists(st.integers(0, NUM_CLASSES - 1), min_size=num_examples, max_size=num_examples))
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(targets)


def assert_valid(plan: Plan, num_examples: int) -> None:
    assert plan.indices.dtype == torch.int64
    assert plan.weights.dtype == torch.float32
    assert plan.indices.shape == plan.weights.shape
    assert len(plan) >= 1
    assert bool(((plan.indices >= 0) & (plan.indices < num_examples)).all()), plan.indices.tolist()
    assert bool((plan.weights.isfinite() & (plan.weights > 0)).all()), plan.weights.tolist()


@pytest.mark.parametrize("name", sorted(catalog(10)))
@settings(max_examples=12, deadline=None)
@given(data=st.data(), num_examples=st.integers(1, 20), num_epochs=st.integers(3, 6), seed=st.integers(0, 10**6))
def test_plans_are_valid_and_sized_as_announced(
    name: str, data: st.DataObject, num_examples: int, num_epochs: int, seed: int
) -> None:
    policy = catalog(num_examples)[name]
    try:
        policy.validate(num_examples, num_epochs)
    except ValueError:
        assert name == "infobatch_budget"  # budgets too small for tiny runs; covered by the InfoBatch tests
        return
    logits, targets = classification_data(data.draw, num_examples)
    try:
        run = tracked_run(policy, logits, targets, num_epochs=num_epochs, seed=seed)
    except ValueError as error:
        # Dropping flagged examples can leave nothing of the inner plan; the sampler says so.
        if name != "noise_drop" or "planned no examples" not in str(error):
            raise
        return
    for epoch, plan in enumerate(run.plans):
        assert_valid(plan, num_examples)
        size = policy.epoch_size(num_examples, epoch, num_epochs)
        if size is not None:
            assert size == len(plan), f"epoch {epoch}: announced {size}, planned {len(plan)}"
        # One process: the sampler yields the plan itself, in order.
        assert run.yielded[epoch] == list(zip(plan.indices.tolist(), plan.weights.tolist(), strict=True))
        assert run.metrics[epoch]["dynamics/kept_fraction"] == pytest.approx(len(plan) / num_examples)
    if name == "noise_drop":
        flagged = policy.flagged(run.signals_before[-1])  # type: ignore[attr-defined]
        assert not bool(flagged[run.plans[-1].indices].any())


# ------------------------------------------------------------------------------------------------ warm-up

WARMUP_POLICIES: dict[str, Callable[[], Policy]] = {
    "curriculum": lambda: Curriculum(warmup_epochs=2),
    "self_paced": lambda: SelfPaced(warmup_epochs=2, threshold=0.0),
    "static": lambda: StaticPruning("loss", score_epochs=2),
    "bandit": lambda: Bandit(0.2, warmup_epochs=2),
    "importance": lambda: ImportanceSampling(0.2, warmup_epochs=2),
}


@pytest.mark.parametrize("name", sorted(WARMUP_POLICIES))
def test_warmup_epochs_train_on_all_data_with_weight_one(name: str) -> None:
    policy = WARMUP_POLICIES[name]()
    n = 11
    signals = {"loss": torch.linspace(0, 1, n), "loss_ema": torch.linspace(0, 1, n), "epochs_seen": torch.ones(n)}
    for epoch in (0, 1):
        plan = policy.plan(epoch_context(epoch, n, signals, num_epochs=10))
        assert sorted(plan.indices.tolist()) == list(range(n))
        assert plan.weights.tolist() == [1.0] * n
        assert policy.epoch_size(n, epoch, 10) in (n, None)
    after = policy.plan(epoch_context(2, n, signals, num_epochs=10))
    assert len(after) < n  # and the warm-up ends


def test_infobatch_first_epoch_is_full_even_with_scores() -> None:
    n = 9
    signals = {"loss": torch.arange(n, dtype=torch.float32)}
    for policy in (InfoBatch(0.9), InfoBatch(budget=0.5)):
        plan = policy.plan(epoch_context(0, n, signals, num_epochs=8))
        assert sorted(plan.indices.tolist()) == list(range(n))
        assert plan.weights.tolist() == [1.0] * n


# ------------------------------------------------------------------------------------------------ curriculum


def by_key(scores: list[float], *, hardest: bool) -> list[int]:
    """Ids sorted easiest (or hardest) first, ties by the lower id: the reference ranking."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i] if hardest else scores[i], i))


TIED = [3.0, 1.0, 2.0, 1.0, 0.0, 2.0, 3.0, 1.0, 2.0, 0.0, 3.0, 1.0]


@pytest.mark.parametrize(("order", "hardest"), [("easy_to_hard", False), ("hard_to_easy", True)])
def test_curriculum_keeps_the_easiest_or_hardest_share_ties_by_lower_id(order: Any, hardest: bool) -> None:
    n = len(TIED)
    policy = Curriculum(order=order, start=0.25, saturation=1.0)
    for epoch in (1, 2, 3):
        plan = policy.plan(epoch_context(epoch, n, {"loss": torch.tensor(TIED)}, num_epochs=4))
        size = math.ceil((0.25 + 0.75 * epoch / 3) * n - 1e-9)  # progress epoch / (num_epochs - 1)
        assert len(plan) == size
        assert sorted(plan.indices.tolist()) == sorted(by_key(TIED, hardest=hardest)[:size])
        assert plan.weights.tolist() == [1.0] * size


def test_curriculum_balanced_takes_both_ends() -> None:
    scores = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0]
    policy = Curriculum(order="balanced", start=0.5, saturation=1.0)
    plan = policy.plan(epoch_context(1, 10, {"loss": torch.tensor(scores)}, num_epochs=6))
    # share 0.5 + 0.5 * 0.2 = 0.6 -> 6 visits: the 3 easiest and the 3 hardest.
    assert sorted(plan.indices.tolist()) == sorted([9, 1, 5] + [2, 6, 4])


def test_curriculum_balanced_hard_half_skips_unseen_examples() -> None:
    scores = torch.tensor([0.5, math.nan, 0.1, 0.9, 0.3, 0.7, math.nan, 0.2, 0.8, 0.4])
    policy = Curriculum(order="balanced", start=0.4, saturation=1.0)
    plan = policy.plan(epoch_context(1, 10, {"loss": scores}, num_epochs=6))
    # share 0.4 + 0.6 * 0.2 = 0.52 -> 6 visits: the 3 easiest and the 3 hardest seen, no unseen (NaN) id.
    assert sorted(plan.indices.tolist()) == sorted([2, 7, 4] + [3, 8, 5])


def test_curriculum_unseen_examples_come_last() -> None:
    scores = {"loss": torch.tensor([0.5, math.nan, 0.1, math.nan, 0.3])}
    # Share 0.5 + 0.5 * 0.1 = 0.55 of 5 -> 3 visits: the seen ones.
    plan = Curriculum(start=0.5, saturation=1.0).plan(epoch_context(1, 5, scores, num_epochs=11))
    assert sorted(plan.indices.tolist()) == [0, 2, 4]
    # Share 0.64 -> 4 visits: then the unseen example with the lower id.
    plan = Curriculum(start=0.6, saturation=1.0).plan(epoch_context(1, 5, scores, num_epochs=11))
    assert sorted(plan.indices.tolist()) == [0, 1, 2, 4]


def test_curriculum_random_order_ignores_the_scores() -> None:
    policy = Curriculum(order="random", start=0.3)
    assert policy.signals == ()
    first = policy.plan(epoch_context(2, 20, {"loss": torch.arange(20.0)}, num_epochs=6, seed=4))
    second = policy.plan(epoch_context(2, 20, {"loss": -torch.arange(20.0)}, num_epochs=6, seed=4))
    third = policy.plan(epoch_context(2, 20, {}, num_epochs=6, seed=4))
    assert first.indices.tolist() == second.indices.tolist() == third.indices.tolist()
    assert len(first) == policy.epoch_size(20, 2, 6) < 20
    assert sorted(first.indices.tolist()) != list(range(len(first)))  # not just the lowest ids


def test_curriculum_needs_scores_after_warmup() -> None:
    with pytest.raises(ValueError, match="No tracked signals at epoch 1"):
        Curriculum().plan(epoch_context(1, 10, {}, num_epochs=5))


# ------------------------------------------------------------------------------------------------ static pruning


@pytest.mark.parametrize(
    ("mode", "band_offset", "expected"),
    [
        ("hard", 0.0, lambda ranked_hard, size, n: ranked_hard[:size]),
        ("easy", 0.0, lambda ranked_hard, size, n: by_key(TIED, hardest=False)[:size]),
        ("band", 0.25, lambda ranked_hard, size, n: ranked_hard[3 : 3 + size]),
    ],
)
def test_static_pruning_modes(mode: Any, band_offset: float, expected: Callable[..., list[int]]) -> None:
    n = len(TIED)
    policy = StaticPruning("el2n", keep=0.5, mode=mode, band_offset=band_offset)
    plan = policy.plan(epoch_context(1, n, {"el2n": torch.tensor(TIED)}))
    size = round(0.5 * n)
    assert len(plan) == size == policy.epoch_size(n, 1, None)
    assert sorted(plan.indices.tolist()) == sorted(expected(by_key(TIED, hardest=True), size, n))


@pytest.mark.parametrize("n", [3, 5, 7, 9, 11])
def test_static_pruning_band_at_the_edge_keeps_its_size(n: int) -> None:
    # keep + band_offset = 1: the band is the easiest half; rounding must not shrink it.
    policy = StaticPruning("loss", keep=0.5, mode="band", band_offset=0.5)
    plan = policy.plan(epoch_context(1, n, {"loss": torch.arange(n, dtype=torch.float32)}))
    assert len(plan) == policy.epoch_size(n, 1, None) == round(0.5 * n)
    ids = sorted(plan.indices.tolist())
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # a band of consecutive ranks
    assert ids[-1] < n - 1  # below the hardest


def test_static_pruning_class_balanced_with_min_per_class() -> None:
    labels = torch.tensor([0] * 10 + [1] * 3 + [2])
    scores = torch.arange(14, dtype=torch.float32).flip(0)  # id 0 hardest
    policy = StaticPruning("loss", keep=0.3, class_balanced=True, labels=labels, min_per_class=2)
    plan = policy.plan(epoch_context(1, 14, {"loss": scores}))
    # class 0: round(3.0) = 3 hardest; class 1: max(2, round(0.9)) = 2; class 2: min(1, 2) = 1
    assert sorted(plan.indices.tolist()) == [0, 1, 2, 10, 11, 13]
    assert policy.epoch_size(14, 1, None) == 6
    assert plan.weights.tolist() == [1.0] * 6


def test_static_pruning_keeps_the_subset_chosen_at_the_selection_epoch_in_its_state() -> None:
    policy = StaticPruning("loss", keep=0.5, score_epochs=2)
    assert policy.state_dict() == {"version": 1}
    assert len(policy.plan(epoch_context(0, 8, {}))) == 8
    chosen = policy.plan(epoch_context(2, 8, {"loss": torch.arange(8, dtype=torch.float32)}))
    assert sorted(chosen.indices.tolist()) == [4, 5, 6, 7]  # at the selection epoch it ranks by the scores
    # Later scores, and which examples trained since (`last_epoch`), would choose others: the subset stays.
    later = {"loss": -torch.arange(8, dtype=torch.float32), "last_epoch": torch.tensor([3, 3, 3, 3, 3, -1, -1, -1])}
    for epoch in (3, 4):
        assert sorted(policy.plan(epoch_context(epoch, 8, later)).indices.tolist()) == [4, 5, 6, 7]
    state = policy.state_dict()
    assert state["version"] == 1
    assert state["subset"].tolist() == [4, 5, 6, 7]
    # A fresh policy given the state plans the same; one without it refuses rather than guess.
    restored = StaticPruning("loss", keep=0.5, score_epochs=2)
    with pytest.raises(RuntimeError, match="no subset for epoch 3"):
        restored.plan(epoch_context(3, 8, later))
    restored.load_state_dict(state)
    assert sorted(restored.plan(epoch_context(3, 8, later)).indices.tolist()) == [4, 5, 6, 7]
    # A new run (an epoch before the selection) forgets the old choice.
    restored.plan(epoch_context(0, 8, {}))
    assert restored.state_dict() == {"version": 1}


def test_policy_state_round_trips_through_torch_load_weights_only(tmp_path: Any) -> None:
    policy = NoiseAware(StaticPruning("el2n", keep=0.5, score_epochs=1), mode="drop")
    policy.plan(epoch_context(1, 6, {"el2n": torch.arange(6.0), "aum": torch.ones(6)}))
    torch.save(policy.state_dict(), tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert loaded["subset"].tolist() == [3, 4, 5]
    other = NoiseAware(StaticPruning("el2n", keep=0.5, score_epochs=1), mode="drop")
    other.load_state_dict(loaded)
    assert other.state_dict()["subset"].tolist() == [3, 4, 5]
    assert FullData().state_dict() == {}
    with pytest.raises(ValueError, match="FullData keeps no state"):
        FullData().load_state_dict({"subset": torch.zeros(1)})
    with pytest.raises(ValueError, match="version 7"):
        StaticPruning().load_state_dict({"version": 7})


def test_static_pruning_labels_must_match_the_dataset() -> None:
    policy = StaticPruning(labels=torch.zeros(5), class_balanced=True)
    with pytest.raises(ValueError, match="labels has 5 entries, the dataset has 6 examples"):
        policy.validate(6, None)


# ------------------------------------------------------------------------------------------------ InfoBatch

SCORES = torch.tensor([0.2, 1.5, 0.1, 3.0, 0.4, 2.2, 0.3, 0.9, 2.8, 0.05, 1.0, 0.6])  # mean 1.0875


def test_infobatch_ratio_prunes_only_below_the_mean_and_reweights() -> None:
    policy = InfoBatch(prune=0.75, anneal=0.0)
    below = set((SCORES < SCORES.mean()).nonzero().squeeze(1).tolist())
    dropped_any = Counter[int]()
    for seed in range(40):
        plan = policy.plan(epoch_context(3, 12, {"loss": SCORES}, num_epochs=8, seed=seed))
        kept = plan.indices.tolist()
        assert len(set(kept)) == len(kept)
        dropped_any.update(set(range(12)) - set(kept))
        for index, weight in zip(kept, plan.weights.tolist(), strict=True):
            assert weight == pytest.approx(4.0 if index in below else 1.0)
    assert set(dropped_any) == below  # every well-learned example is dropped sometimes, no other ever


@pytest.mark.parametrize("prune", [0.5, 0.9])
def test_infobatch_budget_drops_the_easiest_first_with_bounded_unbiased_weights(prune: float) -> None:
    policy = InfoBatch(prune, budget=0.7, anneal=0.25)
    n, epochs = 12, 8
    policy.validate(n, epochs)
    easiest = torch.argsort(SCORES).tolist()
    learned = int((SCORES < SCORES.mean()).sum())  # 8 well-learned, 4 others
    for epoch in range(1, 6):
        size = policy.epoch_size(n, epoch, epochs)
        assert size is not None
        plan = policy.plan(epoch_context(epoch, n, {"loss": SCORES}, num_epochs=epochs))
        assert len(plan) == size
        drop = n - size  # 5 or 6 of 12
        pool = max(learned, math.ceil(drop / prune))  # the well-learned, or the easiest beyond them
        kept = dict(zip(plan.indices.tolist(), plan.weights.tolist(), strict=True))
        assert set(range(n)) - set(kept) <= set(easiest[:pool])  # drops only from the easiest `pool`
        for index, weight in kept.items():
            assert weight == pytest.approx(pool / (pool - drop) if index in easiest[:pool] else 1.0)
            assert weight <= 1.0 / (1.0 - prune) + 1e-6  # every weight bounded


def test_infobatch_budget_never_drops_the_hardest_and_bounds_weights() -> None:
    # A regression test: 1,000 skewed losses, 12 epochs; drops beyond the well-learned came uniformly from the
    # hard examples (62 of the 100 hardest in an epoch) and weights reached 21.6.
    generator = torch.Generator().manual_seed(0)
    loss = torch.rand(1000, generator=generator).pow(4) * 5
    hardest = set(torch.argsort(loss, descending=True)[:100].tolist())
    policy = InfoBatch(0.7, budget=0.6)
    policy.validate(1000, 12)
    for epoch in range(12):
        plan = policy.plan(epoch_context(epoch, 1000, {"loss": loss}, num_epochs=12))
        assert hardest <= set(plan.indices.tolist()), epoch
        assert float(plan.weights.max()) <= 1 / 0.3 + 1e-6


def test_infobatch_budget_beyond_the_weight_bound_is_refused_at_setup_saying_which_budgets_can() -> None:
    with pytest.raises(ValueError, match="budget=0.6 cannot") as error:
        InfoBatch(budget=0.6).validate(1000, 12)  # 3 full epochs, 9 that drop at most 500
    assert "at least 0.625" in str(error.value)
    assert "Raise prune" in str(error.value)
    InfoBatch(budget=0.625).validate(1000, 12)
    with pytest.raises(ValueError, match="cannot drop 667 of 1000"):  # planned without validate: still refused
        InfoBatch(0.5, budget=0.5, anneal=0.0).plan(epoch_context(1, 1000, {"loss": torch.rand(1000)}, num_epochs=4))


def test_infobatch_non_finite_scores_are_never_well_learned() -> None:
    # A regression test: forgetting_events scores never-learned examples +inf; the mean became inf and every
    # other example counted as well-learned, so an example forgotten five times was pruned.
    forgetting = torch.tensor([0.0, 0.0, 0.0, 0.0, 5.0, 1.0, 0.0, 0.0])
    correctness = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 1.0, 0.0])  # id 7: never learned -> +inf
    signals = {"forgetting_events": forgetting, "correctness": correctness}
    dropped = Counter[int]()
    for policy in (
        InfoBatch(0.9, anneal=0.0, signal="forgetting_events"),
        InfoBatch(0.5, budget=0.875, anneal=0.0, signal="forgetting_events"),
    ):
        for seed in range(30):
            plan = policy.plan(epoch_context(1, 8, signals, num_epochs=2, seed=seed))
            dropped.update(set(range(8)) - set(plan.indices.tolist()))
    assert set(dropped) <= {0, 1, 2, 3, 6}  # mean of the finite counts is 0.75: only the zeros are well-learned


def test_infobatch_anneals_to_full_data_at_the_end() -> None:
    for policy in (InfoBatch(0.9, anneal=0.3), InfoBatch(budget=0.8, anneal=0.3)):
        epochs = 10
        start = policy.anneal_start(epochs)
        assert start == 7  # floor(0.7 * 10)
        for epoch in range(epochs):
            plan = policy.plan(epoch_context(epoch, 12, {"loss": SCORES}, num_epochs=epochs))
            if epoch == 0 or epoch >= start:
                assert sorted(plan.indices.tolist()) == list(range(12)), epoch
                assert plan.weights.tolist() == [1.0] * 12
                assert policy.epoch_size(12, epoch, epochs) == 12
            else:
                assert len(plan) < 12, epoch


def infobatch_full_epochs(num_epochs: int, anneal: float) -> int:
    """Full-data epochs by the docstring: the first, and the last ``anneal`` share (at least from epoch 1)."""
    anneal_start = max(1, math.floor((1 - anneal) * num_epochs + 1e-9))
    return 1 + (num_epochs - anneal_start)


@settings(max_examples=150, deadline=None)
@given(
    num_examples=st.integers(1, 30),
    num_epochs=st.integers(2, 8),
    budget=st.floats(0.05, 1.0),
    anneal=st.sampled_from([0.0, 0.125, 0.25, 0.5]),
    scores=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, math.nan]), min_size=30, max_size=30),
    seed=st.integers(0, 1000),
)
def test_infobatch_budget_is_exact_over_the_run(
    num_examples: int, num_epochs: int, budget: float, anneal: float, scores: list[float], seed: int
) -> None:
    policy = InfoBatch(budget=budget, anneal=anneal)
    target = round(budget * num_epochs * num_examples)
    full = infobatch_full_epochs(num_epochs, anneal)
    pruning = num_epochs - full
    smallest = num_examples - math.floor(0.5 * num_examples)  # drops at most prune * N, weights at most 2
    feasible = pruning > 0 and full * num_examples + pruning * smallest <= target
    if not feasible:
        with pytest.raises(ValueError, match=re.escape(f"budget={budget}")):
            policy.validate(num_examples, num_epochs)
        return
    policy.validate(num_examples, num_epochs)
    signals = {"loss": torch.tensor(scores[:num_examples])}
    total = 0
    for epoch in range(num_epochs):
        plan = policy.plan(epoch_context(epoch, num_examples, signals, num_epochs=num_epochs, seed=seed))
        assert_valid(plan, num_examples)
        assert len(plan) == policy.epoch_size(num_examples, epoch, num_epochs)
        assert len(set(plan.indices.tolist())) == len(plan)  # without replacement
        total += len(plan)
    assert total == target


def test_infeasible_budget_raises_at_validate_with_a_true_minimum() -> None:
    policy = InfoBatch(budget=0.55, anneal=0.0)
    # 2 epochs of 4 examples: epoch 0 is full (4 passes) and epoch 1 drops at most 2, so the run needs 6 of 8 passes.
    with pytest.raises(ValueError, match=r"budget=0\.55 cannot be met") as error:
        policy.validate(4, 2)
    stated = float(re.search(r"at least (\d\.\d+)", str(error.value)).group(1))  # type: ignore[union-attr]
    assert stated > 0.55  # the minimum it states must exclude the budget it rejects
    InfoBatch(budget=stated + 1e-3, anneal=0.0).validate(4, 2)  # and the minimum is enough
    with pytest.raises(ValueError, match=r"budget=0\.55 cannot be met"):
        CurriculumSampler(range(4), policy, dynamics=_tracker(), num_epochs=2)


def test_budget_with_no_pruning_epoch_raises() -> None:
    with pytest.raises(ValueError, match="some epoch must prune"):
        InfoBatch(budget=0.9, anneal=0.5).validate(10, 2)


def _tracker() -> Any:
    from lightning_curricula import TrainingDynamics

    return TrainingDynamics()


# ------------------------------------------------------------------------------------------------ bandit


def test_bandit_ucb_picks_unseen_first_then_the_upper_bound() -> None:
    signals = {
        "loss_ema": torch.tensor([0.5, 0.1, 0.3, math.nan, 2.0, math.nan]),
        "epochs_seen": torch.tensor([1, 1, 2, 0, 8, 0]),
    }
    # UCB at epoch 1: value + sqrt(ln 2 / pulls) = [1.33, 0.93, 0.89, inf, 2.29, inf]
    plan = Bandit(0.5).plan(epoch_context(1, 6, signals))
    assert sorted(plan.indices.tolist()) == [3, 4, 5]
    plan = Bandit(0.34).plan(epoch_context(1, 6, signals))  # 2 of 6: only the unseen
    assert sorted(plan.indices.tolist()) == [3, 5]
    plan = Bandit(0.67).plan(epoch_context(1, 6, signals))  # 4 of 6: unseen, then 2.29 and 1.33
    assert sorted(plan.indices.tolist()) == [0, 3, 4, 5]
    # Without exploration the plain values rank the seen ones: 2.0, 0.5, 0.3.
    plan = Bandit(0.84, exploration=0.0).plan(epoch_context(1, 6, signals))
    assert sorted(plan.indices.tolist()) == [0, 2, 3, 4, 5]


def test_bandit_epsilon_greedy_explores_outside_the_top() -> None:
    n = 20
    values = torch.arange(n, dtype=torch.float32)  # id 19 hardest
    signals = {"loss_ema": values, "epochs_seen": torch.ones(n)}
    policy = Bandit(0.4, strategy="epsilon_greedy", epsilon=0.5)  # 8 visits: top 4 + 4 explored
    explored: set[int] = set()
    for seed in range(10):
        plan = policy.plan(epoch_context(1, n, signals, seed=seed)).indices.tolist()
        assert len(plan) == len(set(plan)) == 8
        assert {16, 17, 18, 19} <= set(plan)
        explored |= set(plan) - {16, 17, 18, 19}
    assert len(explored) > 8  # different seeds explore different examples
    greedy = Bandit(0.4, strategy="epsilon_greedy", epsilon=0.0).plan(epoch_context(1, n, signals))
    assert sorted(greedy.indices.tolist()) == list(range(12, 20))


# ------------------------------------------------------------------------------------------------ importance


def test_importance_probabilities_smoothing_and_nan_to_mean() -> None:
    scores = torch.tensor([1.0, 3.0, math.nan, 4.0])
    p = sampling_probabilities(scores, 0.2)
    # NaN gets the mean of the seen scores, 8/3; total 32/3.
    filled = torch.tensor([1.0, 3.0, 8.0 / 3.0, 4.0], dtype=torch.float64)
    expected = 0.8 * filled / filled.sum() + 0.2 / 4
    torch.testing.assert_close(p, expected.float())  # float32 probabilities (their sums accumulate in float64)
    assert p.dtype == torch.float32
    assert float(p.sum(dtype=torch.float64)) == pytest.approx(1.0)
    assert sampling_probabilities(torch.zeros(5), 0.1).tolist() == pytest.approx([0.2] * 5)
    assert sampling_probabilities(torch.full((3,), math.nan), 0.1).tolist() == pytest.approx([1 / 3] * 3)


def test_importance_plan_weights_are_inverse_probabilities() -> None:
    scores = torch.tensor([0.1, 2.0, 0.5, 5.0, 0.0, 1.0, math.nan, 3.0])
    policy = ImportanceSampling(0.75, smoothing=0.3)
    plan = policy.plan(epoch_context(2, 8, {"loss": scores}))
    assert len(plan) == policy.epoch_size(8, 2, None) == 6
    p = sampling_probabilities(scores, 0.3)
    torch.testing.assert_close(plan.weights, (1.0 / (8 * p[plan.indices])).float())


def test_importance_draws_follow_the_probabilities() -> None:
    scores = torch.tensor([1.0, 0.0, 3.0, 6.0])
    policy = ImportanceSampling(1.0, smoothing=0.2)
    counts = Counter[int]()
    for epoch in range(1, 501):
        counts.update(policy.plan(epoch_context(epoch, 4, {"loss": scores})).indices.tolist())
    p = sampling_probabilities(scores, 0.2)  # [0.13, 0.05, 0.29, 0.53]
    draws = 500 * 4
    for index in range(4):
        standard_error = math.sqrt(float(p[index]) * (1 - float(p[index])) / draws)
        assert abs(counts[index] / draws - float(p[index])) < 4 * standard_error


# ---------------------------------------------------------------------------------------- twin, noise, self-paced


def test_random_twin_matches_the_size_with_uniform_ids() -> None:
    inner = Curriculum(start=0.25, saturation=1.0)
    twin = RandomTwin(inner)
    scores = {"loss": torch.arange(40, dtype=torch.float32)}
    assert twin.signals == inner.signals
    assert twin.needs_num_epochs
    assert twin.varies_length
    chosen: set[int] = set()
    for epoch in range(1, 4):
        plan = twin.plan(epoch_context(epoch, 40, scores, num_epochs=4))
        assert len(plan) == twin.epoch_size(40, epoch, 4) == inner.epoch_size(40, epoch, 4)
        assert len(set(plan.indices.tolist())) == len(plan)
        assert plan.weights.tolist() == [1.0] * len(plan)
        chosen |= set(plan.indices.tolist())
    assert max(chosen) >= 30  # not the curriculum's easiest share


def test_random_twin_of_static_pruning_keeps_its_size_after_the_selection_epoch() -> None:
    # The twin's visits are random, so a StaticPruning that read its kept set back from `last_epoch` would
    # count every id the twin visited last epoch (a regression: epochs grew and the LR schedule ran out of steps).
    twin = RandomTwin(StaticPruning("el2n", keep=0.5, score_epochs=1))
    n = 20
    last_epoch = torch.zeros(n, dtype=torch.int64)
    for epoch in range(1, 5):
        signals = {"el2n": torch.rand(n, generator=torch.Generator().manual_seed(epoch)), "last_epoch": last_epoch}
        plan = twin.plan(epoch_context(epoch, n, signals, num_epochs=5))
        assert len(plan) == twin.epoch_size(n, epoch, 5) == 10, epoch
        last_epoch = last_epoch.clone()
        last_epoch[plan.indices] = epoch


def test_noise_aware_demote_and_drop() -> None:
    signals = {
        "aum": torch.tensor([2.0, -1.0, 0.5, -0.2, 1.0, 0.3]),
        "el2n": torch.tensor([0.1, 1.3, 0.9, 1.2, 0.2, 0.8]),
        "forgetting_events": torch.tensor([0, 0, 3, 0, 0, 0]),
    }
    inner = StaticPruning("el2n", keep=0.5)
    # Demoted: ids 1 and 3 (AUM < 0) look easiest, so the hardest half is 2, 5, 4.
    demote = NoiseAware(inner, mode="demote")
    assert sorted(demote.plan(epoch_context(1, 6, signals)).indices.tolist()) == [2, 4, 5]
    assert demote.epoch_size(6, 1, None) == 3
    # Dropped: the plain hardest half is 1, 3, 2; AUM drops 1 and 3, forgetting drops 2.
    drop = NoiseAware(inner, mode="drop", min_forgetting=2)
    assert drop.plan(epoch_context(1, 6, signals)).indices.tolist() == []
    assert drop.epoch_size(6, 1, None) is None
    assert sorted(NoiseAware(inner, mode="drop").plan(epoch_context(1, 6, signals)).indices.tolist()) == [2]


def test_self_paced_threshold_grows() -> None:
    loss = torch.tensor([0.1, 0.5, 1.0, 1.2, 1.6, 3.0])
    policy = SelfPaced(threshold=1.0, growth=1.3, min_fraction=0.1)
    sizes = [sorted(policy.plan(epoch_context(e, 6, {"loss": loss})).indices.tolist()) for e in (1, 2, 3)]
    assert sizes == [[0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4]]  # thresholds 1.0, 1.3, 1.69
    floor = SelfPaced(threshold=0.0, min_fraction=0.5).plan(epoch_context(1, 6, {"loss": loss}))
    assert sorted(floor.indices.tolist()) == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ ties, determinism


def test_all_equal_scores_pick_the_lowest_ids() -> None:
    n = 10
    equal = {"loss": torch.ones(n), "el2n": torch.ones(n), "loss_ema": torch.ones(n), "epochs_seen": torch.ones(n)}
    context = epoch_context(1, n, equal, num_epochs=3)  # progress 0.5: 0.3 + 0.7 * 0.5 of 10 -> 7 visits
    assert sorted(Curriculum(start=0.3, saturation=1.0).plan(context).indices.tolist()) == list(range(7))
    assert sorted(Curriculum(order="hard_to_easy", start=0.3, saturation=1.0).plan(context).indices.tolist()) == list(
        range(7)
    )
    assert sorted(StaticPruning(keep=0.4).plan(context).indices.tolist()) == [0, 1, 2, 3]
    assert sorted(Bandit(0.3).plan(context).indices.tolist()) == [0, 1, 2]
    # InfoBatch: nothing is below the mean, so the ratio mode keeps everything at weight 1 ...
    ratio = InfoBatch(0.9, anneal=0.0).plan(epoch_context(1, n, equal, num_epochs=4))
    assert sorted(ratio.indices.tolist()) == list(range(n))
    assert ratio.weights.tolist() == [1.0] * n
    # ... and the budget mode drops 4 from the 4 / prune = 8 "easiest" (ties: the lowest ids), weighting the rest 8 / 4.
    budget = InfoBatch(budget=0.75, anneal=0.0).plan(epoch_context(1, n, equal, num_epochs=4))
    size = len(budget)
    assert size == 6  # (30 - 10) passes over 3 pruning epochs: 6, 7, 7
    kept = dict(zip(budget.indices.tolist(), budget.weights.tolist(), strict=True))
    assert {8: 1.0, 9: 1.0}.items() <= kept.items()
    assert sorted(kept.values()) == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("name", sorted(catalog(10)))
def test_same_inputs_same_plan_and_epochs_differ(name: str) -> None:
    n, epochs = 30, 8
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(n, NUM_CLASSES, generator=generator)
    targets = torch.randint(NUM_CLASSES, (n,), generator=generator)
    planner = catalog(n)[name]
    first = tracked_run(planner, logits, targets, num_epochs=epochs, seed=3)
    second = tracked_run(catalog(n)[name], logits, targets, num_epochs=epochs, seed=3)
    for one, two in zip(first.plans, second.plans, strict=True):
        assert one.indices.tolist() == two.indices.tolist()
        assert torch.equal(one.weights, two.weights)
    # Re-planning an epoch from the same signals (and state) gives the same plan; another epoch another one.
    policy = catalog(n)[name]
    policy.load_state_dict(planner.state_dict())
    signals = first.signals_before[3]
    again = policy.plan(epoch_context(3, n, signals, num_epochs=epochs, seed=3))
    assert again.indices.tolist() == first.plans[3].indices.tolist()
    other = policy.plan(epoch_context(4, n, signals, num_epochs=epochs, seed=3))
    assert other.indices.tolist() != again.indices.tolist()
    another_seed = policy.plan(epoch_context(3, n, signals, num_epochs=epochs, seed=4))
    assert another_seed.indices.tolist() != again.indices.tolist()


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("build", "quoted"),
    [
        (lambda: RandomSubset(0.0), "fraction must be in (0, 1], got 0.0"),
        (lambda: RandomSubset(1.5), "fraction must be in (0, 1], got 1.5"),
        (lambda: Curriculum(start=0.0), "start must be in (0, 1], got 0.0"),
        (lambda: Curriculum(saturation=1.2), "saturation must be in (0, 1], got 1.2"),
        (lambda: Curriculum(order="sideways"), "got 'sideways'"),  # type: ignore[arg-type]
        (lambda: Curriculum(pacing="cubic"), "Unknown pacing 'cubic'"),
        (lambda: Curriculum(warmup_epochs=0), "warmup_epochs must be >= 1"),
        (lambda: Curriculum("bogus"), "Unknown signal 'bogus'"),
        (lambda: SelfPaced(growth=0.5), "got 0.5"),
        (lambda: SelfPaced(min_fraction=-0.1), "min_fraction must be in (0, 1], got -0.1"),
        (lambda: StaticPruning(keep=0.0), "keep must be in (0, 1], got 0.0"),
        (lambda: StaticPruning(keep=1.01), "keep must be in (0, 1], got 1.01"),
        (lambda: StaticPruning(mode="middle"), "got 'middle'"),  # type: ignore[arg-type]
        (lambda: StaticPruning(keep=0.6, mode="band", band_offset=0.5), "got 0.5 with keep=0.6"),
        (lambda: StaticPruning(score_epochs=0), "score_epochs must be >= 1"),
        (lambda: StaticPruning(class_balanced=True), "class_balanced=True needs labels"),
        (lambda: InfoBatch(prune=1.0), "prune must be in [0, 1), got 1.0"),
        (lambda: InfoBatch(prune=-0.1), "prune must be in [0, 1), got -0.1"),
        (lambda: InfoBatch(anneal=1.0), "anneal must be in [0, 1), got 1.0"),
        (lambda: InfoBatch(budget=0.0), "budget must be in (0, 1], got 0.0"),
        (lambda: InfoBatch(budget=1.5), "budget must be in (0, 1], got 1.5"),
        (lambda: InfoBatch(signal="margin"), "got 'margin'"),
        (lambda: Bandit(0.0), "fraction must be in (0, 1], got 0.0"),
        (lambda: Bandit(0.5, strategy="thompson"), "got 'thompson'"),  # type: ignore[arg-type]
        (lambda: Bandit(0.5, exploration=-1.0), "got -1.0"),
        (lambda: Bandit(0.5, epsilon=1.5), "1.5"),
        (lambda: ImportanceSampling(2.0), "fraction must be in (0, 1], got 2.0"),
        (lambda: ImportanceSampling(0.5, signal="margin"), "got 'margin'"),
        (lambda: ImportanceSampling(0.5, smoothing=0.0), "got 0.0"),
        (lambda: NoiseAware(FullData(), mode="keep"), "got 'keep'"),  # type: ignore[arg-type]
    ],
)
def test_constructor_validation_quotes_the_value(build: Callable[[], Policy], quoted: str) -> None:
    with pytest.raises(ValueError, match=re.escape(quoted)):
        build()


def test_policies_needing_num_epochs_say_so() -> None:
    for policy in (Curriculum(), InfoBatch(), RandomTwin(Curriculum()), NoiseAware(InfoBatch())):
        with pytest.raises(ValueError, match="needs num_epochs"):
            policy.validate(10, None)

"""`CurriculumSampler`: sharding of any plan across ranks, iteration, the global RNG, errors, planned steps."""

from __future__ import annotations

import math
import random
import re
from typing import Any

import pytest
import torch
from helpers import ClassificationDataset, make_trainer
from hypothesis import given, settings
from hypothesis import strategies as st
from selection_helpers import CurriculumClassifier, FixedPlan, HookLoop, one_thread, tracked_run  # noqa: F401
from torch.utils.data import BatchSampler, DataLoader

from lightning_curricula import (
    Bandit,
    Curriculum,
    CurriculumSampler,
    FullData,
    ImportanceSampling,
    InfoBatch,
    NoiseAware,
    Policy,
    RandomSubset,
    RandomTwin,
    SelfPaced,
    StaticPruning,
    TrainingDynamics,
    WithIndex,
    curriculum_dataloader,
    find_dynamics,
)


def shards(num_examples: int, policy: Policy, world: int, *, drop_last: bool, **kwargs: Any) -> list[CurriculumSampler]:
    return [
        CurriculumSampler(range(num_examples), policy, num_replicas=world, rank=rank, drop_last=drop_last, **kwargs)
        for rank in range(world)
    ]


def interleave(per_rank: list[list[Any]]) -> list[Any]:
    """Rank ``r`` visits positions ``r, r + W, ...``: put the ranks' items back in plan order."""
    world = len(per_rank)
    merged: list[Any] = [None] * sum(len(items) for items in per_rank)
    for rank, items in enumerate(per_rank):
        merged[rank::world] = items
    return merged


@st.composite
def plans(draw: st.DrawFn) -> tuple[int, list[int], list[float]]:
    num_examples = draw(st.integers(1, 12))
    ids = draw(st.lists(st.integers(0, num_examples - 1), min_size=1, max_size=30))
    weights = draw(st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.25]), min_size=len(ids), max_size=len(ids)))
    return num_examples, ids, weights


@settings(max_examples=200, deadline=None)
@given(plan=plans(), world=st.integers(1, 4), drop_last=st.booleans())
def test_ranks_split_any_plan_evenly_and_exactly(
    plan: tuple[int, list[int], list[float]], world: int, drop_last: bool
) -> None:
    num_examples, ids, weights = plan
    policy = FixedPlan(ids, weights)
    if drop_last and len(ids) < world:  # every rank would get nothing: refused (see the test below)
        with pytest.raises(ValueError, match="fewer than the"):
            shards(num_examples, policy, world, drop_last=drop_last)[0].plan()
        return
    samplers = shards(num_examples, policy, world, drop_last=drop_last)
    per_rank = [list(sampler) for sampler in samplers]
    lengths = {len(items) for items in per_rank}
    assert len(lengths) == 1, f"ranks yield {[len(items) for items in per_rank]} items"
    assert [len(sampler) for sampler in samplers] == [len(items) for items in per_rank]
    visits = list(zip(ids, weights, strict=True))
    size = len(visits)
    if drop_last:
        expected = visits[: size - size % world]  # the plan minus its tail
    else:
        expected = [visits[i % size] for i in range(math.ceil(size / world) * world)]  # padded with its start
    assert interleave(per_rank) == expected
    if size % world == 0:
        assert sorted(interleave(per_rank)) == sorted(visits)  # no padding: exactly the plan


@pytest.mark.parametrize("world", [2, 3, 4])
def test_full_data_not_divisible_by_the_world_size(world: int) -> None:
    num_examples = 10
    samplers = shards(num_examples, FullData(), world, drop_last=False, seed=5)
    per_rank = [[index for index, _ in sampler] for sampler in samplers]
    assert [len(items) for items in per_rank] == [math.ceil(num_examples / world)] * world
    union = [index for items in per_rank for index in items]
    assert set(union) == set(range(num_examples))
    padding = len(union) - num_examples
    plan = samplers[0].plan().indices.tolist()
    assert sorted(union) == sorted(plan + plan[:padding])
    trimmed = shards(num_examples, FullData(), world, drop_last=True, seed=5)
    assert {len(list(sampler)) for sampler in trimmed} == {num_examples // world}


def test_a_rank_with_no_data() -> None:
    # 2 examples, 4 ranks: dropping the tail would leave every rank empty, so it is refused.
    for sampler in shards(2, FullData(), 4, drop_last=True):
        with pytest.raises(ValueError, match="plans 2 visits for epoch 0, fewer than the 4 ranks"):
            len(sampler)
    # Padding instead: every rank gets one visit, ranks 2 and 3 repeat the plan's start.
    padded = shards(2, FullData(), 4, drop_last=False)
    per_rank = [list(sampler) for sampler in padded]
    assert [len(items) for items in per_rank] == [1, 1, 1, 1]
    assert per_rank[2] == per_rank[0]
    assert per_rank[3] == per_rank[1]


def test_all_ranks_plan_alike_from_the_seed_and_epoch() -> None:
    samplers = shards(23, RandomSubset(0.5), 3, drop_last=False, seed=11)
    for sampler in samplers:
        sampler.set_epoch(4)
    first = samplers[0].plan()
    for sampler in samplers[1:]:
        assert sampler.plan().indices.tolist() == first.indices.tolist()
    samplers[0].set_epoch(5)
    assert samplers[0].plan().indices.tolist() != first.indices.tolist()


# ------------------------------------------------------------------------------------------------ RNG, iteration

RNG_POLICIES = {
    "full": lambda: FullData(),
    "random": lambda: RandomSubset(0.5),
    "random_static": lambda: RandomSubset(0.5, static=True),
    "curriculum_random": lambda: Curriculum(order="random"),
    "self_paced": lambda: SelfPaced(),
    "static": lambda: StaticPruning("el2n"),
    "infobatch": lambda: InfoBatch(0.5, anneal=0.2),
    "infobatch_budget": lambda: InfoBatch(0.8, budget=0.7, anneal=0.2),
    "bandit": lambda: Bandit(0.4, strategy="epsilon_greedy"),
    "importance": lambda: ImportanceSampling(0.5),
    "twin": lambda: RandomTwin(Curriculum()),
    "noise": lambda: NoiseAware(Curriculum(), mode="drop"),
}


@pytest.mark.parametrize("name", sorted(RNG_POLICIES))
def test_planning_and_iterating_never_touch_the_global_rng(name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(21, 3, generator=generator)
    targets = torch.randint(3, (21,), generator=generator)
    torch.manual_seed(1234)
    random.seed(1234)
    torch_state, python_state = torch.random.get_rng_state(), random.getstate()
    run = tracked_run(RNG_POLICIES[name](), logits, targets, num_epochs=5, seed=3)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    assert any(len(plan) < 21 for plan in run.plans) or name in ("full", "noise")  # the policy did plan


def curriculum_sampler_after_one_epoch(**kwargs: Any) -> tuple[CurriculumSampler, TrainingDynamics]:
    """A sampler for epoch 1 of a Curriculum, its tracker holding the (real) tables of epoch 0."""
    generator = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(20, 3, generator=generator), torch.randint(3, (20,), generator=generator)
    run = tracked_run(Curriculum(start=0.3, saturation=1.0), logits, targets, num_epochs=1)
    assert run.dynamics is not None
    dynamics = run.dynamics
    sampler = CurriculumSampler(
        range(20), Curriculum(start=0.3, saturation=1.0), dynamics=dynamics, num_epochs=4, **kwargs
    )
    return sampler, dynamics


def test_iterating_twice_in_an_epoch_gives_the_same_items() -> None:
    sampler, _ = curriculum_sampler_after_one_epoch()
    sampler.set_epoch(1)
    first = list(sampler)
    assert 0 < len(first) < 20
    assert list(sampler) == first
    # BatchSampler feeds the iterator through itertools.islice: the epoch must end.
    batches = list(BatchSampler(sampler, 4, drop_last=False))
    assert [pair for batch in batches for pair in batch] == first
    assert len(batches) == math.ceil(len(first) / 4) == len(BatchSampler(sampler, 4, drop_last=False))
    iterator = iter(sampler)
    assert iter(iterator) is iterator  # a fresh one-shot iterator, not the sampler restarting
    # The same through a DataLoader (which does not ask the sampler's length before iterating).
    loader = DataLoader(WithIndex(ClassificationDataset(20)), sampler=sampler, batch_size=4)
    once = [batch["index"].tolist() for batch in loader]
    assert [batch["index"].tolist() for batch in loader] == once
    assert [index for batch in once for index in batch] == [index for index, _ in first]


def test_a_dataloader_over_the_sampler_yields_the_plan() -> None:
    sampler, _ = curriculum_sampler_after_one_epoch()
    loader = DataLoader(WithIndex(ClassificationDataset(20)), sampler=sampler, batch_size=3)
    batches = list(loader)
    ids = [index for batch in batches for index in batch["index"].tolist()]
    weights = [weight for batch in batches for weight in batch["weight"].tolist()]
    plan = sampler.plan()
    assert ids == plan.indices.tolist()
    assert weights == plan.weights.tolist()
    assert len(loader) == math.ceil(len(plan) / 3)


# ------------------------------------------------------------------------------------------------ errors


def quiet_dynamics() -> TrainingDynamics:
    return TrainingDynamics()


def test_policy_reading_signals_needs_a_tracker() -> None:
    with pytest.raises(ValueError, match=re.escape("Curriculum needs signals ['loss'] from a TrainingDynamics")):
        CurriculumSampler(range(10), Curriculum(), num_epochs=3)
    with pytest.raises(ValueError, match="Curriculum needs an epoch clock"):
        CurriculumSampler(range(10), Curriculum(order="random"), num_epochs=3)
    with pytest.raises(ValueError, match=re.escape("Bandit needs signals ['loss_ema', 'epochs_seen']")):
        CurriculumSampler(range(10), Bandit(0.5))


def test_policy_needing_num_epochs_without_it() -> None:
    dynamics = TrainingDynamics()
    for policy in (InfoBatch(), Curriculum(), RandomTwin(InfoBatch(budget=0.5))):
        with pytest.raises(ValueError, match="needs num_epochs: pass num_epochs=max_epochs"):
            CurriculumSampler(range(10), policy, dynamics=dynamics)
    with pytest.raises(ValueError, match="num_epochs must be a positive integer, got 0"):
        CurriculumSampler(range(10), FullData(), num_epochs=0)


def test_tracker_of_another_dataset_size() -> None:
    with pytest.raises(ValueError, match="The tracker has 5 examples, the dataset has 6"):
        CurriculumSampler(range(6), InfoBatch(), dynamics=TrainingDynamics(num_examples=5), num_epochs=4)


def test_not_a_policy_and_empty_inputs() -> None:
    with pytest.raises(TypeError, match="policy must be a lightning_curricula.policies.Policy, got str"):
        CurriculumSampler(range(10), "curriculum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="The dataset is empty"):
        CurriculumSampler([], FullData())
    with pytest.raises(ValueError, match="Invalid rank 2 for num_replicas 2"):
        CurriculumSampler(range(10), FullData(), num_replicas=2, rank=2)


def test_an_empty_plan_raises() -> None:
    sampler = CurriculumSampler(range(10), FixedPlan([]))
    with pytest.raises(ValueError, match="FixedPlan planned no examples for epoch 0"):
        len(sampler)
    with pytest.raises(ValueError, match="FixedPlan planned no examples for epoch 0"):
        list(sampler)


def test_set_epoch_must_agree_with_the_tracker() -> None:
    sampler, _ = curriculum_sampler_after_one_epoch()
    sampler.set_epoch(3)
    with pytest.raises(RuntimeError, match=r"set_epoch\(3\) but the tracker has synced 1 epochs"):
        list(sampler)


def test_reusing_the_sampler_after_the_length_changed_raises() -> None:
    generator = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(20, 3, generator=generator), torch.randint(3, (20,), generator=generator)
    dynamics = quiet_dynamics()
    loop = HookLoop(dynamics, logits, targets, num_epochs=4)
    # What Lightning does with reload_dataloaders_every_n_epochs=0: one loader for the whole run, whose
    # length (and so num_training_batches) is read once; its fetcher asks len() again every epoch.
    sampler = CurriculumSampler(range(20), InfoBatch(0.8, budget=0.6, anneal=0.25), dynamics=dynamics, num_epochs=4)
    assert len(loop.train_epoch(sampler, 0)) == 20
    with pytest.raises(RuntimeError, match=r"Trainer\(reload_dataloaders_every_n_epochs=1\)"):
        loop.train_epoch(sampler, 1)


class PlainLoaderClassifier(CurriculumClassifier):
    """A CurriculumSampler in a DataLoader built by hand, not by curriculum_dataloader."""

    def train_dataloader(self) -> DataLoader[Any]:
        dataset = WithIndex(self.data)
        sampler = CurriculumSampler(
            dataset, self.policy, dynamics=find_dynamics(self.trainer), num_epochs=self.trainer.max_epochs
        )
        return DataLoader(dataset, sampler=sampler, batch_size=self.batch_size)


def test_a_trainer_that_does_not_reload_the_loader_fails_loudly() -> None:
    model = PlainLoaderClassifier(InfoBatch(0.9, budget=0.6, anneal=0.25))
    trainer = make_trainer(max_epochs=4, callbacks=[quiet_dynamics()], reload_dataloaders_every_n_epochs=0)
    with pytest.raises(RuntimeError, match=r"reload_dataloaders_every_n_epochs=1"):
        trainer.fit(model)
    assert sorted(model.trained) == [0]  # it stopped at the first epoch whose length changed
    assert len(model.trained[0]) == 37


def test_curriculum_dataloader_checks_the_reload_setting_at_setup() -> None:
    model = CurriculumClassifier(Curriculum())
    trainer = make_trainer(max_epochs=3, callbacks=[quiet_dynamics()])  # reload_dataloaders_every_n_epochs=0
    with pytest.raises(ValueError, match=r"set Trainer\(reload_dataloaders_every_n_epochs=1\) \(it is 0\)"):
        trainer.fit(model)
    assert model.steps == 0


@pytest.mark.parametrize("key", ["shuffle", "sampler", "batch_sampler"])
def test_curriculum_dataloader_sets_the_sampler_itself(key: str) -> None:
    trainer = make_trainer(max_epochs=2, reload_dataloaders_every_n_epochs=1)
    with pytest.raises(ValueError, match=f"remove {key}= from its arguments"):
        curriculum_dataloader(ClassificationDataset(5), trainer, FullData(), **{key: True})


# ------------------------------------------------------------------------------------------------ planned steps


@pytest.mark.parametrize(
    ("policy", "epochs", "accumulate"),
    [
        (Curriculum(start=0.3, saturation=0.8), 4, 1),
        (InfoBatch(0.8, budget=0.6, anneal=0.2), 5, 2),
    ],
    ids=["curriculum", "infobatch_budget"],
)
def test_planned_steps_equal_the_optimizer_steps_of_a_run(policy: Policy, epochs: int, accumulate: int) -> None:
    model = CurriculumClassifier(policy, batch_size=5)
    planner = CurriculumSampler(WithIndex(model.data), policy, dynamics=quiet_dynamics(), num_epochs=epochs)
    planned = planner.planned_steps(batch_size=5, accumulate_grad_batches=accumulate)
    trainer = make_trainer(
        max_epochs=epochs,
        callbacks=[quiet_dynamics()],
        reload_dataloaders_every_n_epochs=1,
        accumulate_grad_batches=accumulate,
    )
    trainer.fit(model)
    assert trainer.global_step == planned
    assert planned < epochs * math.ceil(37 / 5 / accumulate)  # the run is shorter than full data


def test_planned_steps_raise_when_sizes_depend_on_the_scores() -> None:
    sampler = CurriculumSampler(range(20), InfoBatch(0.5), dynamics=TrainingDynamics(), num_epochs=5)
    with pytest.raises(ValueError, match="InfoBatch sizes epoch 1 from the scores"):
        sampler.planned_steps(batch_size=4)
    with pytest.raises(ValueError, match="planned_steps needs num_epochs"):
        CurriculumSampler(range(20)).planned_steps(batch_size=4)


def test_plans_of_different_seeds_do_not_replay_each_other() -> None:
    # Regression: the generator was seeded with seed + epoch, so (seed 1, epoch e) replayed (seed 0, epoch e + 1).
    first = CurriculumSampler(range(50), seed=0)
    second = CurriculumSampler(range(50), seed=1)
    for epoch in range(3):
        assert not torch.equal(first.plan(epoch + 1).indices, second.plan(epoch).indices)


class ReadsAum(FullData):
    """Declares a classification signal it needs (and would silently ignore if missing)."""

    signals = ("aum",)


@pytest.mark.parametrize(
    "policy",
    [NoiseAware(Curriculum(start=0.5)), NoiseAware(StaticPruning("loss")), ReadsAum()],
    ids=["noise_aware_curriculum", "noise_aware_static", "any_policy"],
)
def test_a_signal_the_tracker_never_produces_fails_at_the_first_plan_naming_it(policy: Policy) -> None:
    # A regression test: with a loss-only training_step, NoiseAware fell back to its inner plan every epoch.
    n = 12
    dynamics = TrainingDynamics(num_examples=n)
    loop = HookLoop(dynamics, torch.zeros(n, 3), torch.zeros(n, dtype=torch.long), num_epochs=4)
    sampler = CurriculumSampler(range(n), policy, dynamics=dynamics, num_epochs=4)
    assert len(sampler.plan()) == n  # epoch 0: nothing tracked yet
    ids = torch.tensor([index for index, _ in sampler])
    dynamics.on_train_epoch_start(loop.trainer, loop.module)  # type: ignore[arg-type]
    loss_only = {"losses": torch.rand(ids.numel())}
    dynamics.on_train_batch_end(loop.trainer, loop.module, loss_only, {"index": ids}, 0)  # type: ignore[arg-type]
    dynamics.on_train_epoch_end(loop.trainer, loop.module)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"reads the signals \[.*'aum'.*\].*'logits' \(B, C\) and integer 'targets'"):
        CurriculumSampler(range(n), policy, dynamics=dynamics, num_epochs=4).plan()


def test_drop_last_with_a_plan_smaller_than_the_world_size_raises_naming_both() -> None:
    # A regression test: every rank got an empty epoch, silently.
    message = r"plans 1 visits for epoch 0, fewer than the 2 ranks: with drop_last_plan=True"
    sampler = CurriculumSampler(range(5), FixedPlan([3]), num_replicas=2, rank=1, drop_last=True)
    with pytest.raises(ValueError, match=message):
        len(sampler)
    # Sizes known in advance fail at construction: 3 of 4 ranks, at the first paced epoch.
    with pytest.raises(ValueError, match=r"plans 3 visits for epoch 1, fewer than the 4 ranks"):
        CurriculumSampler(
            range(10),
            StaticPruning(keep=0.3),
            dynamics=TrainingDynamics(),
            num_epochs=3,
            num_replicas=4,
            rank=0,
            drop_last=True,
        )
    padded = CurriculumSampler(range(5), FixedPlan([3]), num_replicas=2, rank=1)  # padding still works
    assert list(padded) == [(3, 1.0)]

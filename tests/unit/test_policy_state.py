"""Policies keep their own checkpointed state; StaticPruning plans its recorded subset.

The tracker a sampler is bound to stores the bound policy's state in its ``state_dict`` and hands a
loaded state to the policy when the next sampler binds it (on resume ``Callback.load_state_dict`` runs
before ``train_dataloader()``).
"""

from __future__ import annotations

import io
import re

import pytest
import torch
from selection_helpers import HookLoop, one_thread  # noqa: F401
from torch.nn import functional as F

from lightning_curricula import (
    Curriculum,
    CurriculumSampler,
    InfoBatch,
    Policy,
    RandomTwin,
    StaticPruning,
    TrainingDynamics,
)

N, EPOCHS = 20, 5


def classification(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, generator=generator), torch.randint(3, (N,), generator=generator)


def quiet_tracker() -> TrainingDynamics:
    return TrainingDynamics(num_examples=N)


def run_epochs(
    policy: StaticPruning | RandomTwin, *, trained_share: dict[int, float], nonfinite_at: int | None = None
) -> list[int]:
    """Plan sizes of each epoch when epoch ``e`` trains only the first ``trained_share[e]`` of its visits
    (an epoch cut short by ``limit_train_batches`` / ``max_steps``, or trimmed by ``drop_last_plan``), and
    epoch ``nonfinite_at`` has a NaN loss for its first five visits."""
    logits, targets = classification()
    dynamics = quiet_tracker()
    loop = HookLoop(dynamics, logits, targets, num_epochs=EPOCHS)
    sizes = []
    for epoch in range(EPOCHS):
        sampler = CurriculumSampler(range(N), policy, dynamics=dynamics, num_epochs=EPOCHS)
        sizes.append(len(sampler.plan()))
        sampler.set_epoch(epoch)
        loop.trainer.current_epoch = epoch
        dynamics.on_train_epoch_start(loop.trainer, loop.module)  # type: ignore[arg-type]
        ids = torch.tensor([index for index, _ in sampler])
        ids = ids[: round(trained_share.get(epoch, 1.0) * ids.numel())]
        losses = F.cross_entropy(logits[ids], targets[ids], reduction="none")
        if epoch == nonfinite_at:
            losses[:5] = float("nan")
        outputs = {"losses": losses, "logits": logits[ids], "targets": targets[ids]}
        dynamics.on_train_batch_end(loop.trainer, loop.module, outputs, {"index": ids}, 0)  # type: ignore[arg-type]
        dynamics.on_train_epoch_end(loop.trainer, loop.module)  # type: ignore[arg-type]
    return sizes


@pytest.mark.parametrize(
    ("trained_share", "nonfinite_at"),
    [({1: 0.5}, None), ({}, 1), ({1: 0.9, 2: 0.5}, 2)],
    ids=["selection_epoch_cut_short", "nonfinite_losses_at_selection", "both"],
)
def test_static_pruning_never_shrinks_below_its_announced_size(
    trained_share: dict[int, float], nonfinite_at: int | None
) -> None:
    # The subset used to be read back from the tables (last_epoch >= score_epochs): examples the selection
    # epoch did not finish, or whose loss was non-finite, left the subset for good.
    for policy in (StaticPruning("el2n", keep=0.5, score_epochs=1), RandomTwin(StaticPruning("el2n", keep=0.5))):
        sizes = run_epochs(policy, trained_share=trained_share, nonfinite_at=nonfinite_at)
        assert sizes == [policy.epoch_size(N, epoch, EPOCHS) for epoch in range(EPOCHS)]


def test_the_tracker_checkpoints_the_bound_policy_and_hands_it_back_on_resume() -> None:
    policy = StaticPruning("el2n", keep=0.4, score_epochs=1)
    dynamics = quiet_tracker()
    loop = HookLoop(dynamics, *classification(), num_epochs=EPOCHS)
    for epoch in range(3):
        loop.train_epoch(CurriculumSampler(range(N), policy, dynamics=dynamics, num_epochs=EPOCHS), epoch)
    assert policy.subset is not None
    buffer = io.BytesIO()
    torch.save(dynamics.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["policy"]["policy"] == "StaticPruning"
    assert state["policy"]["num_epochs"] == EPOCHS
    assert torch.equal(state["policy"]["state"]["subset"], policy.subset)

    resumed_tracker, resumed_policy = quiet_tracker(), StaticPruning("el2n", keep=0.4, score_epochs=1)
    resumed_tracker.load_state_dict(state)
    assert resumed_policy.subset is None  # nothing bound yet: the state waits for the sampler
    assert resumed_tracker.state_dict()["policy"] == state["policy"]  # and a checkpoint in between keeps it
    sampler = CurriculumSampler(range(N), resumed_policy, dynamics=resumed_tracker, num_epochs=EPOCHS)
    assert torch.equal(resumed_policy.subset, policy.subset)  # type: ignore[arg-type]
    want = CurriculumSampler(range(N), policy, dynamics=dynamics, num_epochs=EPOCHS).plan(3)
    assert sampler.plan(3).indices.tolist() == want.indices.tolist()


def test_a_policy_rebuilt_each_epoch_keeps_the_state_of_the_one_it_replaces() -> None:
    dynamics = quiet_tracker()
    loop = HookLoop(dynamics, *classification(), num_epochs=EPOCHS)
    for epoch in range(EPOCHS):  # a train_dataloader() that builds a new policy object every epoch
        policy = StaticPruning("el2n", keep=0.5, score_epochs=1)
        sampler = CurriculumSampler(range(N), policy, dynamics=dynamics, num_epochs=EPOCHS)
        assert len(sampler.plan()) == policy.epoch_size(N, epoch, EPOCHS)
        loop.train_epoch(sampler, epoch)


def test_a_checkpoint_of_another_policy_is_refused() -> None:
    dynamics = quiet_tracker()
    CurriculumSampler(range(N), StaticPruning(), dynamics=dynamics, num_epochs=EPOCHS)
    resumed = quiet_tracker()
    resumed.load_state_dict(dynamics.state_dict())
    with pytest.raises(ValueError, match=re.escape("holds the state of a StaticPruning policy; this run's policy is")):
        CurriculumSampler(range(N), Curriculum(), dynamics=resumed, num_epochs=EPOCHS)


@pytest.mark.parametrize("policy", [Curriculum(), InfoBatch(budget=0.8), RandomTwin(Curriculum())])
def test_resuming_with_another_max_epochs_is_refused_naming_both(policy: Policy) -> None:
    # A regression test: pacing, annealing and budgets depend on num_epochs; a resume with another max_epochs
    # silently changed them.
    dynamics = quiet_tracker()
    CurriculumSampler(range(N), policy, dynamics=dynamics, num_epochs=EPOCHS)
    resumed = quiet_tracker()
    resumed.load_state_dict(dynamics.state_dict())
    with pytest.raises(ValueError, match=r"max_epochs=8: the checkpoint's run has max_epochs=5"):
        CurriculumSampler(range(N), policy, dynamics=resumed, num_epochs=8)
    again = quiet_tracker()
    again.load_state_dict(dynamics.state_dict())
    CurriculumSampler(range(N), policy, dynamics=again, num_epochs=EPOCHS)  # the same length resumes


def test_policies_whose_plans_ignore_num_epochs_may_resume_with_another() -> None:
    dynamics = quiet_tracker()
    CurriculumSampler(range(N), StaticPruning(), dynamics=dynamics, num_epochs=EPOCHS)
    resumed = quiet_tracker()
    resumed.load_state_dict(dynamics.state_dict())
    CurriculumSampler(range(N), StaticPruning(), dynamics=resumed, num_epochs=2 * EPOCHS)

"""Epoch policies and the sampler: what the model sees next epoch, as a `Plan` of example ids and weights.

A policy is a small object whose `Policy.plan` is a function of an `EpochContext`: the epoch, the
number of epochs, the synced per-example signals of `TrainingDynamics`, and a private
``torch.Generator`` of the run's seed and the epoch. Every rank computes the same plan without
talking; `CurriculumSampler` executes this rank's shard of it. With tables sharded over the ranks
(``TrainingDynamics(sharded=True)``), a policy with ``plans_from_shards`` plans from this rank's slice
with a few small collectives instead, and returns a `ShardedPlan` of the same visits.

One module per family (`baselines`, `curricula`, `pruning`, `sampling`, `noise`); the kernels they
share (shuffles, easiest-first sets, stratified drops) are public in `lightning_curricula.policies.selection`,
the pacing functions in `lightning_curricula.policies.pacing`. `CurriculumSampler` executes a plan,
`curriculum_dataloader` wires it to the ``Trainer``, `planned_optimizer_steps` sizes an LR schedule by it.

Weights are 1 unless a policy reweights to stay unbiased (InfoBatch, importance sampling); the loss
is then ``weighted_mean(losses, batch["weight"])``.
"""

from lightning_curricula.policies._base import EpochContext, Plan, Policy, ShardedPlan, epoch_generator
from lightning_curricula.policies._loader import curriculum_dataloader
from lightning_curricula.policies._sampler import CurriculumSampler
from lightning_curricula.policies._schedule import planned_optimizer_steps
from lightning_curricula.policies.baselines import FullData, RandomSubset, RandomTwin
from lightning_curricula.policies.curricula import Curriculum, ScoreCurriculum, SelfPaced
from lightning_curricula.policies.noise import NoiseAware
from lightning_curricula.policies.pacing import pacing_function
from lightning_curricula.policies.pruning import Bandit, InfoBatch, StaticPruning
from lightning_curricula.policies.sampling import ImportanceSampling
from lightning_curricula.policies.selection import (
    easiest_first,
    sampling_probabilities,
    shuffled_plan,
    stratified_keep,
)

__all__ = [
    "POLICIES",
    "Bandit",
    "Curriculum",
    "CurriculumSampler",
    "EpochContext",
    "FullData",
    "ImportanceSampling",
    "InfoBatch",
    "NoiseAware",
    "Plan",
    "Policy",
    "RandomSubset",
    "RandomTwin",
    "ScoreCurriculum",
    "SelfPaced",
    "ShardedPlan",
    "StaticPruning",
    "curriculum_dataloader",
    "easiest_first",
    "epoch_generator",
    "pacing_function",
    "planned_optimizer_steps",
    "sampling_probabilities",
    "shuffled_plan",
    "stratified_keep",
]

#: Policies by the names used in configs and ``lightning-curricula compare``.
POLICIES: dict[str, type[Policy]] = {
    "full": FullData,
    "random": RandomSubset,
    "curriculum": Curriculum,
    "self_paced": SelfPaced,
    "static": StaticPruning,
    "infobatch": InfoBatch,
    "bandit": Bandit,
    "importance": ImportanceSampling,
}

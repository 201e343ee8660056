"""lightning-curricula: curriculum learning and dynamic data pruning for PyTorch Lightning.

Measure how hard each training example is while the model trains (`TrainingDynamics`), draw it in
TensorBoard (`DynamicsVisuals`), and choose what it sees next (`CurriculumSampler` with a policy from
`lightning_curricula.policies`).
"""

from lightning_curricula._dynamics import TrainingDynamics
from lightning_curricula._loader import curriculum_dataloader, find_dynamics
from lightning_curricula._online import BatchPreselection, OnlineBatchSelection, find_online_selection
from lightning_curricula._sampler import CurriculumSampler
from lightning_curricula._schedule import planned_optimizer_steps
from lightning_curricula._step_outputs import StepOutputs, read_step_outputs
from lightning_curricula._visualize import DynamicsVisuals, data_map_figure
from lightning_curricula._with_index import WithIndex
from lightning_curricula.losses import weighted_mean, weighted_token_mean
from lightning_curricula.pacing import pacing_function
from lightning_curricula.policies import (
    POLICIES,
    Bandit,
    Curriculum,
    EpochContext,
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
from lightning_curricula.ranking import HARDER_WHEN_HIGHER, difficulty_scores, select_indices
from lightning_curricula.reference import FrozenReference, ReferenceLosses, irreducible_losses, vocabulary_size
from lightning_curricula.step_selection import Selection, excess_loss, reducible_loss
from lightning_curricula.streams import ShardedStream, StreamDynamics, stable_id

__version__ = "0.1.0"

__all__ = [
    "HARDER_WHEN_HIGHER",
    "POLICIES",
    "Bandit",
    "Curriculum",
    "CurriculumSampler",
    "DynamicsVisuals",
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
    "StaticPruning",
    "StepOutputs",
    "TrainingDynamics",
    "WithIndex",
    "__version__",
    "curriculum_dataloader",
    "data_map_figure",
    "difficulty_scores",
    "find_dynamics",
    "pacing_function",
    "planned_optimizer_steps",
    "read_step_outputs",
    "select_indices",
    "weighted_mean",
    "weighted_token_mean",
    # Selection inside the step (issue 9)
    "BatchPreselection",
    "FrozenReference",
    "OnlineBatchSelection",
    "ReferenceLosses",
    "Selection",
    "excess_loss",
    "find_online_selection",
    "irreducible_losses",
    "reducible_loss",
    "vocabulary_size",
    "ShardedStream",
    "StreamDynamics",
    "stable_id",
]

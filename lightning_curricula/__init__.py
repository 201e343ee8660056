"""lightning-curricula: curriculum learning and dynamic data pruning for PyTorch Lightning.

Measure how hard each training example is while the model trains (`TrainingDynamics`), and act on it.
"""

from lightning_curricula._dynamics import TrainingDynamics
from lightning_curricula._step_outputs import StepOutputs, read_step_outputs
from lightning_curricula._visualize import data_map_figure
from lightning_curricula._with_index import WithIndex
from lightning_curricula.ranking import HARDER_WHEN_HIGHER, difficulty_scores, select_indices

__version__ = "0.1.0"

__all__ = [
    "HARDER_WHEN_HIGHER",
    "StepOutputs",
    "TrainingDynamics",
    "WithIndex",
    "__version__",
    "data_map_figure",
    "difficulty_scores",
    "read_step_outputs",
    "select_indices",
]

"""Tracking: per-example tables of how hard each example is, the signals derived from them, and their pictures.

`TrainingDynamics` reads each step's outputs (`read_step_outputs`), folds them into dense tables once
per epoch and derives the signals (`lightning_curricula.tracking.signals`, pure functions);
`lightning_curricula.tracking.ranking` turns any of them into difficulty scores. `StreamDynamics`
does the same for streams keyed by an id column; `DynamicsVisuals` draws the tables in TensorBoard.
"""

from lightning_curricula.tracking._dynamics import TrainingDynamics, find_dynamics
from lightning_curricula.tracking._step_outputs import StepOutputs, read_step_outputs
from lightning_curricula.tracking._stream_dynamics import StreamDynamics
from lightning_curricula.tracking._visuals import DynamicsVisuals, data_map_figure
from lightning_curricula.tracking.ranking import HARDER_WHEN_HIGHER, difficulty_scores, select_indices

__all__ = [
    "HARDER_WHEN_HIGHER",
    "DynamicsVisuals",
    "StepOutputs",
    "StreamDynamics",
    "TrainingDynamics",
    "data_map_figure",
    "difficulty_scores",
    "find_dynamics",
    "read_step_outputs",
    "select_indices",
]

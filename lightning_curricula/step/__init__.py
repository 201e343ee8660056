"""Selection inside the step: which examples or tokens of a scored batch to train on, and the losses that do it.

For short runs and streams, where epoch policies cannot act: the pure kernels of
`lightning_curricula.step.selection` (top-k, Selective Backprop's percentile sampling, random twins,
per-token masks), the `OnlineBatchSelection` callback that runs them from a ``training_step``,
reference models and per-example reference losses (`lightning_curricula.step.reference`), and the
weighted losses that keep the plan's and the selection's weights unbiased
(`lightning_curricula.step.losses`).
"""

from lightning_curricula.step._batch_selection import BatchPreselection, OnlineBatchSelection, find_online_selection
from lightning_curricula.step.losses import weighted_mean, weighted_token_mean
from lightning_curricula.step.reference import (
    FrozenReference,
    ReferenceLosses,
    irreducible_losses,
    vocabulary_fingerprint,
    vocabulary_size,
)
from lightning_curricula.step.selection import Selection, excess_loss, reducible_loss

__all__ = [
    "BatchPreselection",
    "FrozenReference",
    "OnlineBatchSelection",
    "ReferenceLosses",
    "Selection",
    "excess_loss",
    "find_online_selection",
    "irreducible_losses",
    "reducible_loss",
    "vocabulary_fingerprint",
    "vocabulary_size",
    "weighted_mean",
    "weighted_token_mean",
]

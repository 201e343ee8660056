"""The `training_step` contract: what `TrainingDynamics` reads from each batch, checked with clear errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["StepOutputs", "read_step_outputs"]

_CONTRACT = (
    "training_step must return a dict such as "
    '{"loss": loss, "losses": per_example_losses, "logits": logits, "targets": targets}; '
    "see docs/contract.md."
)


@dataclass(frozen=True)
class StepOutputs:
    """One batch's per-example values, detached and validated.

    ``weights`` are the plan weights the batch carried (``batch["weight"]`` from `WithIndex` under a
    `CurriculumSampler`); ``None`` when it carried none, which counts as weight 1.
    """

    index: Tensor
    losses: Tensor
    logits: Tensor | None = None
    targets: Tensor | None = None
    weights: Tensor | None = None


def read_step_outputs(outputs: Any, batch: Any, *, index_key: str = "index", weight_key: str = "weight") -> StepOutputs:
    """Read and check the per-example fields of a training step.

    ``index`` comes from ``outputs[index_key]`` when present, else from ``batch[index_key]`` (a mapping
    batch from `WithIndex`); the plan ``weights`` likewise from ``weight_key``, and are ``None`` when
    neither has them. When the step reports its own ``index`` (it trained on part of the batch, say), the
    batch's weights describe other examples and are not read: return ``weight`` too. Shape checks are
    Python comparisons only: no device synchronisation.

    Examples:
        >>> step = read_step_outputs({"losses": torch.tensor([0.5, 2.0])},
        ...                          {"index": torch.tensor([3, 1]), "weight": torch.tensor([1.0, 2.5])})
        >>> step.index.tolist(), step.weights.tolist()
        ([3, 1], [1.0, 2.5])

    Raises:
        TypeError: ``outputs`` is not a mapping, or a field is not a tensor of the right kind.
        ValueError: a field is missing or has the wrong shape; the message names the field, the shape
            seen and the shape expected.
    """
    if not isinstance(outputs, Mapping):
        raise TypeError(f"TrainingDynamics got a {type(outputs).__name__} from training_step. {_CONTRACT}")
    if "losses" not in outputs:
        raise ValueError(f"training_step outputs have no 'losses' (keys: {sorted(outputs)}). {_CONTRACT}")
    index = _read_index(outputs, batch, index_key)
    losses = _tensor(outputs, "losses")
    size = index.shape[0]
    _check_shape("losses", losses, (size,), "(batch_size,) with one loss per example, not reduced")
    if not losses.is_floating_point():
        raise TypeError(f"'losses' must be a floating-point tensor, got dtype {losses.dtype}.")
    logits = _tensor(outputs, "logits") if "logits" in outputs else None
    targets = _tensor(outputs, "targets") if "targets" in outputs else None
    if (logits is None) != (targets is None):
        given, missing = ("logits", "targets") if targets is None else ("targets", "logits")
        raise ValueError(f"training_step outputs have '{given}' but no '{missing}': give both or neither.")
    if logits is not None and targets is not None:
        if logits.ndim != 2 or logits.shape[0] != size or logits.shape[1] < 2:
            raise ValueError(
                f"'logits' has shape {tuple(logits.shape)}, expected ({size}, num_classes) with num_classes >= 2."
            )
        _check_shape("targets", targets, (size,), "(batch_size,) class ids")
        if targets.is_floating_point() or targets.is_complex():
            raise TypeError(f"'targets' must hold integer class ids, got dtype {targets.dtype}.")
    weights = _read_weights(outputs, None if index_key in outputs else batch, weight_key, size)
    return StepOutputs(index=index, losses=losses, logits=logits, targets=targets, weights=weights)


def _read_weights(outputs: Mapping[str, Any], batch: Any, weight_key: str, size: int) -> Tensor | None:
    if weight_key in outputs:
        weights = _tensor(outputs, weight_key)
    elif isinstance(batch, Mapping) and weight_key in batch:
        weights = _tensor(batch, weight_key)
    else:
        return None
    _check_shape(weight_key, weights, (size,), "(batch_size,) plan weights")
    if not (weights.is_floating_point() or weights.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"'{weight_key}' must hold real-valued weights, got dtype {weights.dtype}.")
    return weights


def _read_index(outputs: Mapping[str, Any], batch: Any, index_key: str) -> Tensor:
    if index_key in outputs:
        index = _tensor(outputs, index_key)
    elif isinstance(batch, Mapping) and index_key in batch:
        index = _tensor(batch, index_key)
    else:
        raise ValueError(
            f"Cannot find the example ids: neither the training_step outputs nor the batch have "
            f"'{index_key}'. Wrap the dataset in WithIndex and, for tuple batches, return the id field from "
            f'training_step: "{index_key}": batch[-1], or batch[-2] when the sampler also adds weights.'
        )
    if index.ndim != 1:
        raise ValueError(f"'{index_key}' has shape {tuple(index.shape)}, expected (batch_size,).")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"'{index_key}' must hold integer example ids, got dtype {index.dtype}.")
    return index.long()


def _tensor(container: Mapping[str, Any], key: str) -> Tensor:
    value = container[key]
    if not isinstance(value, Tensor):
        raise TypeError(f"'{key}' must be a torch.Tensor, got {type(value).__name__}.")
    return value.detach()


def _check_shape(name: str, value: Tensor, expected: tuple[int, ...], description: str) -> None:
    if tuple(value.shape) != expected:
        raise ValueError(f"'{name}' has shape {tuple(value.shape)}, expected {expected}: {description}.")

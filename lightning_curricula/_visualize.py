"""TensorBoard views of the dynamics: signal histograms, the data map, and the hardest examples."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import IterableDataset

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from matplotlib.figure import Figure

    from lightning_curricula._dynamics import TrainingDynamics

__all__ = ["data_map_figure", "log_epoch_visuals"]

_NOT_HISTOGRAMS = ("index", "last_epoch")
_MAX_MAP_POINTS = 20_000
_TEXT_KEYS = ("text", "prompt", "instruction", "question", "sentence", "content")


def log_epoch_visuals(dynamics: TrainingDynamics, trainer: pl.Trainer, *, histograms: bool, plots: bool) -> None:
    """Log histograms (every epoch) and the data map and hardest examples (when ``plots``) to TensorBoard."""
    if not (histograms or plots):
        return
    boards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    others = [type(logger).__name__ for logger in trainer.loggers if not isinstance(logger, TensorBoardLogger)]
    if others:
        rank_zero_warn(
            f"TrainingDynamics logs scalars to every logger, but histograms, data maps and example images "
            f"only to TensorBoardLogger; {others} get scalars only."
        )
    if not boards:
        return
    writer = boards[0].experiment
    step = trainer.global_step
    signals = dynamics.signals()
    seen = signals["epochs_seen"] > 0
    prefix = dynamics.name
    if histograms:
        for name, values in signals.items():
            shown = values[seen].float()
            shown = shown[shown.isfinite()]
            if name not in _NOT_HISTOGRAMS and shown.numel():
                writer.add_histogram(f"{prefix}/{name}", shown, step)
    if not plots:
        return
    if "confidence" in signals:
        figure = _maybe_data_map(signals, seen, trainer.current_epoch)
        if figure is not None:
            writer.add_figure(f"{prefix}/data_map", figure, step)
    _log_hardest(dynamics, trainer, writer, step)


def data_map_figure(confidence: Tensor, variability: Tensor, correctness: Tensor, *, title: str = "Data map") -> Figure:
    """The data map of Swayamdipta et al. (2020): confidence against variability, coloured by correctness.

    At most 20,000 points are drawn (a fixed, seeded subsample), so the figure stays fast for any N.

    Args:
        confidence: ``(N,)`` mean probability of the target across epochs.
        variability: ``(N,)`` its standard deviation across epochs.
        correctness: ``(N,)`` share of epochs classified correctly.
        title: the figure's title.

    Returns:
        A ``matplotlib.figure.Figure`` (no pyplot state is touched).
    """
    from matplotlib.figure import Figure

    if confidence.numel() > _MAX_MAP_POINTS:
        keep = torch.randperm(confidence.numel(), generator=torch.Generator().manual_seed(0))[:_MAX_MAP_POINTS]
        confidence, variability, correctness = confidence[keep], variability[keep], correctness[keep]
    figure = Figure(figsize=(6, 5), dpi=100)
    axes = figure.add_subplot()
    points = axes.scatter(
        variability.numpy(), confidence.numpy(), c=correctness.numpy(), cmap="coolwarm_r", vmin=0, vmax=1, s=4
    )
    figure.colorbar(points, ax=axes, label="correctness")
    axes.set(xlabel="variability", ylabel="confidence", title=title, ylim=(-0.02, 1.02))
    for text, x, y in (("easy-to-learn", 0.02, 0.95), ("ambiguous", 0.6, 0.5), ("hard-to-learn", 0.02, 0.05)):
        axes.text(x, y, text, transform=axes.transAxes, fontsize=9, alpha=0.7)
    figure.tight_layout()
    return figure


def _maybe_data_map(signals: dict[str, Tensor], seen: Tensor, epoch: int) -> Figure | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        rank_zero_warn("The data map needs matplotlib: pip install 'lightning-curricula[plot]'.")
        return None
    return data_map_figure(
        signals["confidence"][seen],
        signals["variability"][seen],
        signals["correctness"][seen],
        title=f"Data map, epoch {epoch}",
    )


def _log_hardest(dynamics: TrainingDynamics, trainer: pl.Trainer, writer: Any, step: int) -> None:
    dataset = getattr(trainer.train_dataloader, "dataset", None)
    if dynamics.num_hardest == 0 or dataset is None or isinstance(dataset, IterableDataset):
        return  # a stream cannot be indexed by example id
    scores = dynamics.difficulty(dynamics.hardest_by)
    ids = dynamics.select(dynamics.hardest_by, k=dynamics.num_hardest)
    if ids.numel() == 0:
        return
    items = [dataset[int(i)] for i in ids]
    tag = f"{dynamics.name}/hardest_by_{dynamics.hardest_by}"
    images = [_as_image(item) for item in items]
    if all(image is not None and image.shape[1:] == images[0].shape[1:] for image in images):  # type: ignore[union-attr]
        writer.add_images(tag, torch.stack(images), step)  # type: ignore[arg-type]
    rows = [f"| {int(i)} | {float(scores[i]):.4g} | {_as_text(item)} |" for i, item in zip(ids, items, strict=True)]
    table = "\n".join([f"| id | {dynamics.hardest_by} | text |", "|---|---|---|", *rows])
    writer.add_text(tag, table, step)


def _fields(item: Any) -> list[Any]:
    if isinstance(item, Mapping):
        return list(item.values())
    if isinstance(item, tuple | list):
        return list(item)
    return [item]


def _as_image(item: Any) -> Tensor | None:
    """The first field that looks like an image, as a 3-channel ``(3, H, W)`` tensor in ``[0, 1]``."""
    for field in _fields(item):
        if hasattr(field, "convert") and hasattr(field, "size"):  # a PIL image
            field = torch.from_numpy(numpy.array(field.convert("RGB")))
        if not isinstance(field, Tensor):
            try:
                field = torch.as_tensor(field)
            except (TypeError, ValueError, RuntimeError):
                continue
        image = field.float()
        if image.ndim == 2:
            image = image.unsqueeze(0)
        elif image.ndim == 3 and image.shape[0] not in (1, 3) and image.shape[-1] in (1, 3):
            image = image.permute(2, 0, 1)
        if image.ndim != 3 or image.shape[0] not in (1, 3) or min(image.shape[1:]) < 4:
            continue
        low, high = image.min(), image.max()
        image = (image - low) / (high - low).clamp_min(1e-12)
        return image.expand(3, -1, -1)
    return None


def _as_text(item: Any) -> str:
    """A short text for the item: a text field if it has one, else its non-image fields."""
    if isinstance(item, Mapping):
        for key in _TEXT_KEYS:
            if isinstance(item.get(key), str):
                return _one_line(item[key])
    texts = [field for field in _fields(item) if isinstance(field, str)]
    if texts:
        return _one_line(texts[0])
    small = [field for field in _fields(item) if isinstance(field, int | float) or _is_scalar_tensor(field)]
    return ", ".join(str(field.item() if isinstance(field, Tensor) else field) for field in small)


def _is_scalar_tensor(value: Any) -> bool:
    return isinstance(value, Tensor) and value.numel() == 1


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"

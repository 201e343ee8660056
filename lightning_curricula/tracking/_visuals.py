"""`DynamicsVisuals`: TensorBoard views of a tracker's snapshot: histograms, the data map, the hardest examples."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import IterableDataset
from typing_extensions import override

from lightning_curricula.data._with_index import WithIndex
from lightning_curricula.tracking._dynamics import TrainingDynamics, find_dynamics
from lightning_curricula.tracking._step_outputs import read_step_outputs
from lightning_curricula.tracking.ranking import HARDER_WHEN_HIGHER, difficulty_scores, select_indices

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DynamicsVisuals", "data_map_figure"]

_NOT_HISTOGRAMS = ("index", "last_epoch")
_MAX_MAP_POINTS = 20_000
_TEXT_KEYS = ("text", "prompt", "instruction", "question", "sentence", "content")
_LABEL_KEYS = ("label", "labels", "y", "target", "targets", "class", "fine_label")
_NO_PREDICTION = -1


class DynamicsVisuals(Callback):
    """Draw a `TrainingDynamics` tracker's signals in TensorBoard: histograms, the data map, the hardest examples.

    Reads the tracker's `TrainingDynamics.signals` snapshot after each epoch (the same one the sampler
    plans from) and logs, under the tracker's name:

    - a histogram of every signal over the examples seen so far, every epoch (``log_histograms``);
    - every ``plot_every_n_epochs`` epochs and at the last one: the data map of Swayamdipta et al.
      (2020) (with logits), and the ``num_hardest`` hardest examples by ``hardest_by`` as a grid of
      images captioned with their id, score, given label and predicted label (when the items hold
      images), and as a text table with those columns, which is what reading the data for label
      errors needs.

    The predicted label is the arg-max of the logits at the example's last visit in the plotted epoch
    ("—" when it was not trained that epoch). Each rank keeps the predictions of the examples it
    trained in a table of one byte per example (up to 255 classes; two up to 32,767).

    Args:
        dynamics_name: the tracker to draw, when the ``Trainer`` has several.
        log_histograms: log a histogram of each signal every epoch.
        plot_every_n_epochs: every this-many epochs, and at the last epoch, draw the data map and the
            hardest examples; ``0`` never.
        num_hardest: how many of the hardest examples to show; ``0`` none.
        hardest_by: the signal that ranks them (a key of `HARDER_WHEN_HIGHER`).
        label_key: the key of the label in mapping items; by default the first of ``label``,
            ``labels``, ``y``, ``target``, ``targets``, ``class``, ``fine_label``; tuple items
            ``(x, y, ...)`` give their second field.
        class_names: names of the classes, to show names instead of class ids.

    Raises:
        ValueError: at construction for a bad option; at setup when the ``Trainer`` has no tracker,
            or lists this callback before its tracker (it must read the tracker's finished epoch).

    Examples:
        >>> import lightning.pytorch as pl
        >>> callbacks = [TrainingDynamics(), DynamicsVisuals(plot_every_n_epochs=1, hardest_by="el2n")]
        >>> trainer = pl.Trainer(callbacks=callbacks, max_epochs=1, logger=False, enable_checkpointing=False)

    Note:
        **DDP**: every rank selects the same hardest ids from the synced snapshot; on plotting epochs
        one ``all_gather`` of ``num_hardest`` predictions per rank finds who trained them, and only
        rank 0 draws. **Resume**: nothing to save; the predictions are those of the current epoch.
    """

    def __init__(
        self,
        *,
        dynamics_name: str | None = None,
        log_histograms: bool = True,
        plot_every_n_epochs: int = 5,
        num_hardest: int = 16,
        hardest_by: str = "loss",
        label_key: str | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if plot_every_n_epochs < 0 or num_hardest < 0:
            raise ValueError(
                f"plot_every_n_epochs and num_hardest must be >= 0, got {plot_every_n_epochs!r} and {num_hardest!r}."
            )
        if hardest_by not in HARDER_WHEN_HIGHER:
            raise ValueError(f"hardest_by must be one of {sorted(HARDER_WHEN_HIGHER)}, got {hardest_by!r}.")
        self.dynamics_name = dynamics_name
        self.log_histograms = log_histograms
        self.plot_every_n_epochs = plot_every_n_epochs
        self.num_hardest = num_hardest
        self.hardest_by = hardest_by
        self.label_key = label_key
        self.class_names = list(class_names) if class_names is not None else None
        self.dynamics: TrainingDynamics | None = None
        self._predictions: Tensor | None = None  # this rank's arg-max per example id, this epoch

    @property
    def records_predictions(self) -> bool:
        """Whether the hardest examples are ever drawn, so the per-rank predictions are kept."""
        return self.plot_every_n_epochs > 0 and self.num_hardest > 0

    @property
    def prediction_bytes_per_example(self) -> int:
        """Bytes per example of this rank's prediction table (0 until the first batch with logits)."""
        return 0 if self._predictions is None else self._predictions.element_size()

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dynamics = find_dynamics(trainer, self.dynamics_name)
        if dynamics is None:
            which = f" named {self.dynamics_name!r}" if self.dynamics_name is not None else ""
            raise ValueError(f"DynamicsVisuals draws a TrainingDynamics tracker; the Trainer has none{which}.")
        callbacks = list(trainer.callbacks)  # type: ignore[attr-defined]
        if callbacks.index(dynamics) > callbacks.index(self):
            raise ValueError(
                "DynamicsVisuals must come after its TrainingDynamics in Trainer(callbacks=[...]): it draws the "
                "epoch the tracker has just finished."
            )
        if dynamics.sharded:
            raise ValueError(
                f"DynamicsVisuals draws the whole table, but TrainingDynamics(name={dynamics.name!r}) is sharded over "
                "the ranks: export its shards with to_parquet(directory) and plot them, or track with sharded=False."
            )
        self.dynamics = dynamics

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._predictions is not None:
            self._predictions.fill_(_sentinel(self._predictions.dtype))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        dynamics = self.dynamics
        if not self.records_predictions or not outputs or dynamics is None or dynamics.num_examples is None:
            return
        step = read_step_outputs(outputs, batch, index_key=dynamics.index_key, weight_key=dynamics.weight_key)
        if step.logits is None:
            return
        if self._predictions is None:
            dtype = _prediction_dtype(step.logits.shape[1])
            self._predictions = torch.full((dynamics.num_examples,), _sentinel(dtype), dtype=dtype)
        self._predictions = self._predictions.to(step.logits.device)
        self._predictions[step.index.to(step.logits.device)] = step.logits.argmax(dim=1).to(self._predictions.dtype)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dynamics = self.dynamics
        if dynamics is None or not dynamics.has_tables:
            return
        epoch = trainer.current_epoch
        is_last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        plot = self.plot_every_n_epochs > 0 and ((epoch + 1) % self.plot_every_n_epochs == 0 or is_last)
        signals = dynamics.signals()
        hardest: Tensor | None = None
        predictions: Tensor | None = None
        if plot and self.num_hardest:
            hardest = select_indices(difficulty_scores(signals, self.hardest_by), k=self.num_hardest, largest=True)
            if "margin" in signals:  # logits were tracked: every rank takes part in the gather
                predictions = self._gather_predictions(trainer, pl_module, hardest)
        if trainer.is_global_zero and (self.log_histograms or plot):
            self._draw(trainer, dynamics, signals, plot, hardest, predictions)

    def _gather_predictions(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ids: Tensor) -> Tensor:
        """The predicted class of each id this epoch, from whichever rank trained it; -1 where none did."""
        if self._predictions is None:
            mine = torch.full((ids.numel(),), _NO_PREDICTION, dtype=torch.int64, device=pl_module.device)
        else:
            values = self._predictions[ids.to(self._predictions.device)].long()
            mine = torch.where(values == _sentinel(self._predictions.dtype), _NO_PREDICTION, values)
        gathered = trainer.strategy.all_gather(mine.to(pl_module.device))
        return gathered.reshape(-1, ids.numel()).amax(dim=0).cpu()

    def _draw(
        self,
        trainer: pl.Trainer,
        dynamics: TrainingDynamics,
        signals: dict[str, Tensor],
        plot: bool,
        hardest: Tensor | None,
        predictions: Tensor | None,
    ) -> None:
        boards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        others = [type(logger).__name__ for logger in trainer.loggers if not isinstance(logger, TensorBoardLogger)]
        if others:
            rank_zero_warn(
                f"DynamicsVisuals draws histograms, data maps and examples only to TensorBoardLogger; {others} get "
                "none of them (the tracker's scalars reach every logger)."
            )
        if not boards:
            return
        writer = boards[0].experiment
        step = trainer.global_step
        seen = signals["epochs_seen"] > 0
        prefix = dynamics.name
        if self.log_histograms:
            for name, values in signals.items():
                shown = values[seen].float()
                shown = shown[shown.isfinite()]
                if name not in _NOT_HISTOGRAMS and shown.numel():
                    writer.add_histogram(f"{prefix}/{name}", shown, step)
        if not plot:
            return
        if "confidence" in signals:
            figure = _maybe_data_map(signals, seen, trainer.current_epoch)
            if figure is not None:
                writer.add_figure(f"{prefix}/data_map", figure, step)
        if hardest is not None and hardest.numel():
            self._log_hardest(
                trainer, writer, step, f"{prefix}/hardest_by_{self.hardest_by}", signals, hardest, predictions
            )

    def _log_hardest(
        self,
        trainer: pl.Trainer,
        writer: Any,
        step: int,
        tag: str,
        signals: dict[str, Tensor],
        ids: Tensor,
        predictions: Tensor | None,
    ) -> None:
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if dataset is None or isinstance(dataset, IterableDataset):
            return  # a stream cannot be indexed by example id
        source = dataset.dataset if isinstance(dataset, WithIndex) else dataset
        shown = signals[self.hardest_by]
        items = [source[int(i)] for i in ids]
        labels = [_given_label(item, self.label_key) for item in items]
        predicted: list[int | None] = (
            [None] * len(items) if predictions is None else [None if p < 0 else int(p) for p in predictions.tolist()]
        )
        rows = [
            _HardExample(int(i), float(shown[i]), label, prediction, _as_text(item), _as_image(item))
            for i, item, label, prediction in zip(ids, items, labels, predicted, strict=True)
        ]
        images = [row.image for row in rows]
        if all(image is not None for image in images) and _has_matplotlib():
            writer.add_figure(tag, _hardest_figure(rows, self.hardest_by, class_names=self.class_names), step)
        header = f"| id | {self.hardest_by} | label | predicted | text |"
        lines = [
            f"| {row.index} | {row.score:.4g} | {self._name(row.label)} | {self._name(row.prediction)} | {row.text} |"
            for row in rows
        ]
        writer.add_text(tag, "\n".join([header, "|---|---|---|---|---|", *lines]), step)

    def _name(self, label: int | None) -> str:
        return _class_name(label, self.class_names)


@dataclass(frozen=True)
class _HardExample:
    """One of the hardest examples: its id, score, given and predicted labels, a text and an image."""

    index: int
    score: float
    label: int | None
    prediction: int | None
    text: str
    image: Tensor | None


def _hardest_figure(
    rows: Sequence[_HardExample], signal: str, *, class_names: Sequence[str] | None = None, columns: int = 8
) -> Figure:
    """A grid of the hardest examples, each captioned with its id, score, given label and predicted label.

    A predicted label that differs from the given one is drawn in red: a candidate label error.
    """
    from matplotlib.figure import Figure

    columns = max(1, min(columns, len(rows)))
    lines = math.ceil(len(rows) / columns)
    figure = Figure(figsize=(1.9 * columns, 2.3 * lines), dpi=100)
    for position, row in enumerate(rows):
        axes = figure.add_subplot(lines, columns, position + 1)
        if row.image is not None:
            axes.imshow(row.image.permute(1, 2, 0).numpy(), interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        wrong = row.prediction is not None and row.label is not None and row.prediction != row.label
        caption = (
            f"#{row.index}  {signal} {row.score:.3g}\n"
            f"label {_class_name(row.label, class_names)} · pred {_class_name(row.prediction, class_names)}"
        )
        axes.set_title(caption, fontsize=7, color="red" if wrong else "black")
    figure.tight_layout()
    return figure


def _class_name(label: int | None, class_names: Sequence[str] | None) -> str:
    if label is None:
        return "—"
    if class_names is not None and 0 <= label < len(class_names):
        return f"{class_names[label]} ({label})"
    return str(label)


def _prediction_dtype(num_classes: int) -> torch.dtype:
    """The narrowest integer dtype whose largest value (the "not trained" mark) is not a class id."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if num_classes <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def _sentinel(dtype: torch.dtype) -> int:
    return torch.iinfo(dtype).max


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        rank_zero_warn(
            "The hardest-example grid and the data map need matplotlib: pip install 'lightning-curricula[plot]'."
        )
        return False
    return True


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
    if not _has_matplotlib():
        return None
    return data_map_figure(
        signals["confidence"][seen],
        signals["variability"][seen],
        signals["correctness"][seen],
        title=f"Data map, epoch {epoch}",
    )


def _given_label(item: Any, label_key: str | None) -> int | None:
    """The item's label: ``label_key`` (or a usual label key) of a mapping, the second field of a tuple."""
    if isinstance(item, Mapping):
        keys = [label_key] if label_key is not None else [key for key in _LABEL_KEYS if key in item]
        value = item.get(keys[0]) if keys else None
    elif isinstance(item, tuple | list) and len(item) >= 2:
        value = item[1]
    else:
        value = None
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    if isinstance(value, int | numpy.integer) and not isinstance(value, bool):
        return int(value)
    return None


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

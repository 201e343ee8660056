"""`TrainingDynamics`: dense per-example tables of how hard each training example is, epoch by epoch."""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_curricula.distributed._collectives import world_and_rank
from lightning_curricula.distributed._sharding import TableShard, check_world_size, shard_file_name, write_parquet_shard
from lightning_curricula.tracking import _tables as T
from lightning_curricula.tracking._binding import PolicyBinding
from lightning_curricula.tracking._step_outputs import StepOutputs, read_step_outputs
from lightning_curricula.tracking.ranking import difficulty_scores, select_indices, selection_size

if TYPE_CHECKING:
    import datasets

__all__ = ["TrainingDynamics", "find_dynamics"]

STATE_VERSION = 2  # 2: counts in narrow integer dtypes, `last_seen` (= last epoch + 1), no `last_epoch`
SHARD_STATE_VERSION = 2  # 2: the shard files of a fit live under its run id, recorded in the file and the checkpoint


class TrainingDynamics(Callback):
    r"""Track per-example training dynamics: loss, EL2N, margin / AUM, forgetting, confidence, variability.

    Reads what ``training_step`` returns (see ``docs/contract.md``): ``losses``, one unreduced loss per
    example, is required; ``logits`` ``(B, C)`` and integer ``targets`` ``(B,)`` enable the
    classification signals. The example ids come from ``batch["index"]`` (`WithIndex`) or from
    ``outputs["index"]``.

    Per step the callback does a handful of vectorised tensor ops on the model's device (one
    ``index_add_`` into a dense ``(rows, N)`` accumulator) and never synchronises with the host.
    At each epoch end it all-reduces that accumulator once, folds it into its tables (64 bytes per
    example with every signal, 24 with losses only, for up to 255 epochs; see ``docs/benchmarks.md``)
    and `signals` derives one snapshot of these columns, shared by the sampler, `DynamicsVisuals` and
    the exports:

    | column | meaning (over the epochs in which the example was seen) |
    |---|---|
    | `visits` | training passes over the example (a pass with a non-finite loss excluded) |
    | `epochs_seen` | epochs with at least one finite visit |
    | `last_epoch` | the last such epoch, `-1` if never seen |
    | `loss` | loss in its last epoch (mean over that epoch's visits) |
    | `loss_mean` | mean of its per-epoch losses |
    | `loss_ema` | moving average of its per-epoch losses, weight `ema_decay` on the past |
    | `nonfinite` | visits whose loss (or logits) were NaN or infinite, skipped everywhere else |
    | `el2n` | EL2N in its last epoch (Paul et al. 2021) |
    | `margin` | logit margin in its last epoch (Pleiss et al. 2020) |
    | `aum` | area under the margin: mean per-epoch margin (Pleiss et al. 2020) |
    | `confidence` | mean per-epoch probability of the target (Swayamdipta et al. 2020) |
    | `variability` | standard deviation of that probability across epochs (Swayamdipta et al. 2020) |
    | `correctness` | share of its epochs in which it was classified correctly |
    | `forgetting_events` | correct in one epoch it was seen, wrong in the next (Toneva et al. 2019) |

    An example never seen has ``visits == 0`` and NaN in every float column; policies recognise it
    by that. An epoch-level value is the mean over that epoch's visits, so an example repeated by a
    sampler (``DistributedSampler`` pads the last ranks with repeats) is averaged, never double
    counted in ``epochs_seen``; ``visits`` does count the repeat, because the model trained on it.
    With several visits in an epoch, the example is correct that epoch when a strict majority of
    its visits were.

    Args:
        name: prefix of the logged metrics and part of ``state_key``; give each tracker on one
            ``Trainer`` its own name.
        num_examples: size of the training set; inferred from ``trainer.train_dataloader.dataset``
            when ``None``.
        ema_decay: weight of the past in ``loss_ema``, in ``[0, 1)``.
        history_epochs: also keep the per-epoch loss of the last this-many epochs (``4 * N`` bytes
            each); ``0`` keeps none. See `loss_history`.
        on_nonfinite: ``"skip"`` a NaN or infinite loss (counted in ``nonfinite``, logged, warned
            once per epoch), or ``"raise"`` at once (costs a host-device sync per step).
        index_key: the key that holds the example ids.
        weight_key: the key that holds the plan weights (``batch[weight_key]`` or the outputs'); a
            batch without them counts as weight 1. Only the logged ``weight_mean`` / ``weight_max``
            read them.
        sharded: shard the tables over the ranks: rank ``r`` of ``W`` keeps only the ids
            ``[r N / W, (r + 1) N / W)`` (see "Sharded tables" below).
        shard_dir: with ``sharded``, where each rank writes its shard of a checkpoint, under the run's
            `run_id`; by default ``<Trainer.default_root_dir>/dynamics_shards/<name>``.
        delete_stale_shards: with ``sharded``, delete this run's shards once no checkpoint file of the
            Trainer's ``ModelCheckpoint`` callbacks holds them any more (see "Sharded tables" below);
            ``False`` keeps every shard file.

    It logs scalars (to every logger) once per epoch: what the epoch trained, measured from its
    batches (``kept_fraction``, ``unique_fraction``, ``weight_mean``, ``weight_max``), the passes so far
    and saved, and summaries of the tables; `DynamicsVisuals` draws its signals.

    Examples:
        >>> import lightning.pytorch as pl
        >>> dynamics = TrainingDynamics(name="dynamics")
        >>> trainer = pl.Trainer(callbacks=[dynamics], max_epochs=1, logger=False, enable_checkpointing=False)

    Note:
        **DDP**: every rank accumulates the batches it trains on; one all-reduce (sum) per epoch makes
        the tables identical on all ranks, so any rank can plan from them; it is the epoch's only
        collective (the logged scalars come from the same buffer), except at the first epoch end of a
        fit, where one all-reduce of two counts first gives every rank the layout of the ranks that
        trained: a rank whose every ``training_step`` returned ``None`` (or that had no batch) still
        joins the reduction, and ranks that disagree on returning ``logits`` all raise. Ids travel as
        integers and are never packed into float tensors. **Resume**: ``state_dict`` holds the tables as of the
        last finished epoch (tensors and numbers only, loadable with ``torch.load(weights_only=True)``),
        so a run resumed from an epoch-end checkpoint ends with exactly the tables of an uninterrupted
        run. A partly finished epoch is not saved: a mid-epoch checkpoint warns, and the visits made before
        it are missing from the tables after resume. Checkpoint at epoch ends for an exact resume.

        **Sharded tables** (``sharded=True``), for datasets whose tables do not fit on every rank: each
        rank keeps ``N / W`` rows (64 or 24 bytes each), records its own visits during the epoch (an id
        and the accumulator's rows per visit, instead of a dense ``(rows, N)`` buffer) and at the epoch
        end sends each record to the rank that owns its id (one all-to-all) plus one small all-reduce.
        The tables are those of the unsharded tracker, split by id. `signals`, `difficulty`,
        `to_dataset` and the loss history then cover this rank's ids (the ``index`` column says which);
        `select` and `CurriculumSampler`'s plans use collectives, so every rank calls them; `to_parquet`
        writes one file per rank into a directory. Lightning writes a checkpoint from rank 0 only, so
        each rank writes its shard next to it, when the checkpoint is saved, to
        ``shard_dir/<run_id>/epoch=<e>/shard-<r>-of-<W>.pt``. A fit that starts afresh draws a new
        `run_id` (rank 0, from the OS, broadcast to the other ranks); a fit resumed from a checkpoint
        takes the checkpoint's and writes on under it. So two runs in one root directory never write to
        the same files, and a resumed run continues its own (it rewrites the epochs it trains again, when
        resumed from an earlier checkpoint). The checkpoint and the shard file both record the run id;
        resuming reads the checkpoint's own shards back (a file of another run id is refused, naming both
        ids and the path), on the same number of ranks only. With ``delete_stale_shards`` (the default),
        each save, once the new shards are written, and the end of the fit delete this run's shards
        that a checkpoint file of the Trainer's ``ModelCheckpoint`` callbacks (in its ``dirpath``, or
        among its ``best_k_models``, ``last_model_path``, ``best_model_path``) was seen to hold and none
        holds any more, a file once seen counting until it is deleted (rank 0 reads the files and tells
        the ranks which; each deletes its own file).
        Never deleted: the shards just written, another run's, those only checkpoints saved elsewhere
        hold, nor anything while a checkpoint file cannot be read with ``torch.load(weights_only=True)``.
        A checkpoint saved elsewhere after an epoch a ``ModelCheckpoint`` also saved shares that epoch's
        shards: keep it in a ``ModelCheckpoint``'s folder, or pass ``delete_stale_shards=False``.
    """

    def __init__(
        self,
        *,
        name: str = "dynamics",
        num_examples: int | None = None,
        ema_decay: float = 0.8,
        history_epochs: int = 0,
        on_nonfinite: Literal["skip", "raise"] = "skip",
        index_key: str = "index",
        weight_key: str = "weight",
        sharded: bool = False,
        shard_dir: str | Path | None = None,
        delete_stale_shards: bool = True,
    ) -> None:
        if not name:
            raise ValueError("name must be a non-empty string.")
        if num_examples is not None and num_examples < 1:
            raise ValueError(f"num_examples must be a positive integer or None, got {num_examples!r}.")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}.")
        if history_epochs < 0:
            raise ValueError(f"history_epochs must be >= 0, got {history_epochs!r}.")
        if on_nonfinite not in ("skip", "raise"):
            raise ValueError(f"on_nonfinite must be 'skip' or 'raise', got {on_nonfinite!r}.")
        self.name = name
        self.num_examples = num_examples
        self.ema_decay = ema_decay
        self.history_epochs = history_epochs
        self.on_nonfinite = on_nonfinite
        self.index_key = index_key
        self.weight_key = weight_key
        self.sharded = sharded
        self.shard_dir = None if shard_dir is None else Path(shard_dir)
        self.delete_stale_shards = delete_stale_shards
        #: This rank's slice of the ids and the ranks' collectives, when ``sharded`` (from training start).
        self.table_shard: TableShard | None = None
        #: With ``sharded``: the id of this run's shard files, ``shard_dir/<run_id>/...``; drawn at random (from the
        #: OS, never the global RNG) by rank 0 when a fit is set up and broadcast, or the resumed checkpoint's.
        self.run_id: str | None = None
        self._newest_shards: int | None = None  # the epochs tracked of the shards this fit wrote last
        self._referenced_shards: set[int] = set()  # epochs of this run's shards a checkpoint file was seen to hold
        self._seen_checkpoints: set[Path] = set()  # the files that held them: each counts until it is gone
        self._checkpoint_shards: dict[tuple[str, int, int, int], tuple[str | None, int]] = {}  # file stat -> ref
        self._records: list[tuple[Tensor, Tensor]] = []  # sharded: this epoch's (ids, visit rows) per batch
        self.epochs_tracked = 0
        self._tables: dict[str, Tensor] = {}
        self._history: Tensor | None = None
        self._accumulator: Tensor | None = None  # the flat per-epoch buffer; see `_tables.Layout`
        self._layout: T.Layout | None = None
        self._snapshot: dict[str, Tensor] | None = None  # `signals()` of the current tables, made once
        self._world_size, self._rank = 1, 0
        self._max_epochs: int | None = None  # sizes the count tables; from trainer.max_epochs
        self._checked_ids = False
        self._layout_agreed = False  # DDP: whether every rank has this fit's accumulator layout (`_agree_on_layout`)
        #: The policy a `CurriculumSampler` bound to this tracker runs; its state is checkpointed here.
        self.policy_binding = PolicyBinding()

    # ----------------------------------------------------------------------------------- Lightning hooks

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        size = _dataset_size(trainer)
        if self.num_examples is None:
            self.num_examples = size
        elif size is not None and size != self.num_examples:
            raise ValueError(
                f"TrainingDynamics(name={self.name!r}) tracks {self.num_examples} examples but the training "
                f"dataset has {size}."
            )
        if self.num_examples is None:
            raise ValueError(
                "TrainingDynamics cannot infer the dataset size from the train dataloader; "
                "pass num_examples=len(train_dataset)."
            )
        max_epochs = trainer.max_epochs
        self._max_epochs = max_epochs if max_epochs is not None and max_epochs > 0 else None
        if self.sharded:
            self._start_shard(trainer)
        if not self._tables:
            self._set_tables(T.new_tables(self._rows(), classification=False, counts=self._count_dtype()))
            if self.history_epochs:
                self._history = torch.full((self.history_epochs, self._rows()), math.nan)
        else:  # resumed, perhaps with more epochs than the tables' counts were sized for
            T.widen_counts(self._tables, self._count_dtype())
        self._world_size, self._rank = trainer.world_size, trainer.global_rank
        if self._layout is not None and self._layout.world_size != self._world_size:
            self._accumulator = self._layout = None  # reallocated by the first batch
        self._to(pl_module.device)
        self._checked_ids = False
        self._layout_agreed = False

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._accumulator is not None:
            self._accumulator.zero_()
        self._records = []

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not outputs:  # training_step returned None (Lightning passes {}): the batch was skipped, not trained
            return
        step = read_step_outputs(outputs, batch, index_key=self.index_key, weight_key=self.weight_key)
        if not self._checked_ids:
            self._check_ids(step.index)
        self.update(step)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        metrics: dict[str, float] = {}
        if self._world_size > 1 and not self._layout_agreed:
            self._agree_on_layout(trainer, pl_module)
        if self._accumulator is not None:  # on every rank alike, once the ranks agree on the layout
            if self.table_shard is not None:  # the records go to their ids' owners
                sums, layout = self._shard_sums()
                metrics = self._finish_epoch(sums, epoch, layout=layout)
            else:  # the epoch's one collective: the tables, what was trained and its weights, all in one buffer
                metrics = self._finish_epoch(trainer.strategy.reduce(self._accumulator, reduce_op="sum"), epoch)
            self._accumulator.zero_()
            self._records = []
        # The clock the sampler plans by: epochs done, aligned with the Trainer even after an empty epoch.
        self.epochs_tracked = epoch + 1
        if metrics.get("nonfinite_losses", 0) > 0:
            rank_zero_warn(
                f"TrainingDynamics(name={self.name!r}): {int(metrics['nonfinite_losses'])} visits in epoch "
                f"{epoch} had a non-finite loss or logits; they were skipped."
            )
        # The values are identical on every rank after the all-reduce, so Lightning must not sync them again
        # (a mean costs it two collectives per metric). `rank_zero_only=True` skips its sync; `sync_dist=True`
        # marks them as synced, so it does not warn. Every rank logs them: callbacks can monitor them anywhere.
        pl_module.log_dict(
            {f"{self.name}/{key}": value for key, value in metrics.items()}, sync_dist=True, rank_zero_only=True
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._records or (self._accumulator is not None and bool(self._accumulator.any())):
            rank_zero_warn(
                f"TrainingDynamics(name={self.name!r}) is saved mid-epoch: the tables are those of the last finished "
                "epoch, and the partial epoch is not in the checkpoint. Checkpoint at epoch ends "
                "(ModelCheckpoint(save_on_train_epoch_end=True)) for an exact resume."
            )
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "num_examples": self.num_examples,
            "epochs_tracked": self.epochs_tracked,
            "tables": {key: value.cpu().clone() for key, value in self._tables.items()},
        }
        if self._history is not None:
            state["history"] = self._history.cpu().clone()
        policy = self.policy_binding.state_dict()
        if policy is not None:
            state["policy"] = policy
        return self._save_shard(state) if self.table_shard is not None else state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "shard" in state_dict:  # the checkpoint says where each rank wrote its shard
            state_dict = self._load_shard(state_dict)
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(
                f"TrainingDynamics state has version {state_dict.get('version')!r}; this release reads "
                f"version {STATE_VERSION} (version 2 stores its counts in narrower dtypes and `last_seen` instead "
                "of `last_epoch`). Resume with the release that wrote the checkpoint, or start the tables anew."
            )
        saved = int(state_dict["num_examples"])
        if self.num_examples is not None and saved != self.num_examples:
            raise ValueError(
                f"Cannot resume TrainingDynamics(name={self.name!r}): the checkpoint tracks {saved} examples, "
                f"this run has {self.num_examples}."
            )
        self.num_examples = saved
        self.epochs_tracked = int(state_dict["epochs_tracked"])
        self._set_tables({key: value.clone() for key, value in state_dict["tables"].items()})
        history = state_dict.get("history")
        if self.history_epochs and (history is None or history.shape[0] != self.history_epochs):
            raise ValueError(
                f"history_epochs={self.history_epochs} but the checkpoint kept "
                f"{0 if history is None else history.shape[0]} epochs of history."
            )
        self._history = history.clone() if self.history_epochs and history is not None else None
        self._accumulator = self._layout = None
        self.policy_binding.load_state_dict(state_dict.get("policy"))

    # ----------------------------------------------------------------------------------- per step

    def update(self, step: StepOutputs) -> None:
        """Accumulate one batch: a few vectorised ops and one ``index_add_``; no host-device sync.

        Called by `on_train_batch_end`; call it yourself to track a loop that is not a ``Trainer``.
        """
        classification = step.logits is not None
        if self._accumulator is None:
            self._allocate_accumulator(classification, step.losses.device)
        assert self._accumulator is not None
        assert self._layout is not None
        if classification != self._layout.classification:
            change = "began" if classification else "stopped"
            raise ValueError(
                f"training_step {change} returning 'logits' after the first batch; return them always or never."
            )
        finite = T.finite_visits(step)
        if self.on_nonfinite == "raise" and not bool(finite.all()):
            bad = step.index[~finite].tolist()
            raise FloatingPointError(f"TrainingDynamics(name={self.name!r}): non-finite loss for example ids {bad}.")
        if self.table_shard is None:
            T.accumulate(self._accumulator, self._layout, step, finite, rank=self._rank)
            return
        device = self._accumulator.device
        rows = T.visit_rows(step, finite, classification=classification).to(device)
        self._records.append((step.index.to(device), rows))
        T.accumulate_scalars(self._layout.scalars(self._accumulator), step, finite, rank=self._rank)

    # ----------------------------------------------------------------------------------- per epoch

    def _shard_sums(self) -> tuple[Tensor, T.Layout]:
        """This rank's shard of the epoch's summed accumulator, from every rank's records (see `T.shard_sums`)."""
        assert self.table_shard is not None
        assert self._accumulator is not None
        assert self._layout is not None
        device = self._accumulator.device
        if self._records:
            ids = torch.cat([ids for ids, _ in self._records])
            rows = torch.cat([rows for _, rows in self._records], dim=1)
        else:
            ids, rows = (
                torch.empty(0, dtype=torch.int64, device=device),
                torch.empty(self._layout.rows, 0, device=device),
            )
        return T.shard_sums(ids, rows, self._accumulator, self._layout, self.table_shard)

    def _agree_on_layout(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Give every rank the accumulator layout of the ranks that trained: one small all-reduce.

        The accumulator is allocated by the first `update`, so a rank whose every ``training_step`` returned
        ``None`` (or that had no batches) has none, and its size depends on whether ``logits`` were returned.
        At the epoch ends of a fit until some rank has trained, every rank sums two counts (the ranks with a
        layout, those of them with classification rows); a rank without one then allocates the agreed one,
        so all ranks run the epoch's reduction with buffers of one size. The counts are the same on every
        rank, so every rank takes the same branch: all skip the epoch end while none has trained, and all
        raise when the ranks that trained disagree.

        Raises:
            ValueError: some ranks returned ``logits`` and others did not.
        """
        layout = self._layout
        mine = [0, 0] if layout is None else [1, int(layout.classification)]
        votes = torch.tensor(mine, dtype=torch.int64, device=pl_module.device)
        trained, classification = (int(count) for count in trainer.strategy.reduce(votes, reduce_op="sum").tolist())
        if trained == 0:
            return
        if classification not in (0, trained):
            raise ValueError(
                f"TrainingDynamics(name={self.name!r}): {classification} of the {trained} ranks that trained returned "
                "'logits' and 'targets', the others did not; return them on every rank or on none."
            )
        if layout is None:
            self._allocate_accumulator(classification > 0, pl_module.device)
        self._layout_agreed = True

    def _finish_epoch(self, sums: Tensor, epoch: int, *, layout: T.Layout | None = None) -> dict[str, float]:
        """Fold the summed accumulator ``sums`` of ``epoch`` into the tables; the epoch's metrics.

        ``layout`` is that of ``sums``, by default the accumulator's (a shard's sums have their own).
        """
        layout = layout or self._layout
        assert layout is not None
        totals = T.epoch_totals(sums, layout)
        if totals.correct is not None and "margin" not in self._tables:
            counts = self._tables["visits"].dtype
            self._tables |= T.new_classification_tables(totals.visits.numel(), counts=counts, device=sums.device)
        forgotten = T.update_tables(self._tables, totals, epoch, ema_decay=self.ema_decay)
        self._snapshot = None
        if self._history is not None:
            self._history[epoch % self.history_epochs] = torch.where(totals.seen, totals.loss, math.nan)
        return self._epoch_metrics(totals, forgotten, epoch)

    def _epoch_metrics(self, totals: T.EpochTotals, forgotten: Tensor | None, epoch: int) -> dict[str, float]:
        """What the epoch trained (measured, DDP padding repeats included) and what the tables say now.

        Sums over this rank's rows, added up over the ranks when the tables are sharded (one all-reduce).
        """
        tables = self._tables
        seen = totals.seen
        trained = totals.visits + totals.nonfinite
        parts = {
            "epoch_passes": trained.sum(),
            "trained": (trained > 0).sum(),
            "seen": seen.sum(),
            "loss": torch.where(seen, totals.loss.double(), 0.0).sum(),
            "nonfinite": totals.nonfinite.sum(),
            "passes": tables["visits"].sum(dtype=torch.int64) + tables["nonfinite"].sum(dtype=torch.int64),
        }
        if forgotten is not None:
            ever_seen = tables["epochs_seen"] > 0
            parts |= {
                "ever_seen": ever_seen.sum(),
                "learned": (ever_seen & (tables["last_correct"] == 1)).sum(),
                "forgotten": forgotten.sum(),
            }
        values = torch.stack([value.double() for value in parts.values()])
        if self.table_shard is not None:
            values = self.table_shard.total(values)
        sums = dict(zip(parts, values.tolist(), strict=True))  # one host sync
        size = self.num_examples
        assert size is not None
        epoch_passes, passes = sums["epoch_passes"], sums["passes"]
        metrics = {
            "kept_fraction": epoch_passes / size,
            "unique_fraction": sums["trained"] / size,
            "weight_mean": totals.weight_sum / epoch_passes if epoch_passes else math.nan,
            "weight_max": totals.weight_max if epoch_passes else math.nan,
            "seen_fraction": sums["seen"] / size,
            "mean_loss": sums["loss"] / sums["seen"] if sums["seen"] else math.nan,
            "nonfinite_losses": sums["nonfinite"],
            "sample_passes": passes,
            "passes_saved_fraction": 1.0 - passes / ((epoch + 1) * size),
        }
        if forgotten is not None:
            metrics |= {
                "learned_fraction": sums["learned"] / sums["ever_seen"] if sums["ever_seen"] else math.nan,
                "forgetting_events": sums["forgotten"],
            }
        return metrics

    # ----------------------------------------------------------------------------------- reading

    @property
    def has_tables(self) -> bool:
        """Whether the tables exist: after training starts, or after a checkpoint is loaded."""
        return bool(self._tables)

    def signals(self) -> dict[str, Tensor]:
        """The per-example columns (see the class docstring), one row per example id, on the CPU.

        One snapshot per change of the tables (an epoch end, a loaded checkpoint): the sampler, the
        visuals and the exports share it, so the tables are copied to the host once per epoch. Treat
        the tensors as read-only.

        Examples:
            >>> TrainingDynamics(num_examples=3).signals()["loss"]
            tensor([nan, nan, nan])
        """
        if self._snapshot is None:
            tables = self._tables or (
                T.new_tables(self.num_examples, classification=False) if self.num_examples else {}
            )
            if not tables:
                raise RuntimeError(
                    "TrainingDynamics has no tables yet: it learns the dataset size when training starts."
                )
            self._snapshot = T.signal_columns(tables, start=self.table_shard.start if self.table_shard else 0)
        return dict(self._snapshot)

    def loss_history(self) -> tuple[list[int], Tensor]:
        """The per-epoch losses kept by ``history_epochs``: ``(epochs, table)``, oldest epoch first.

        ``table[i, j]`` is the loss of example ``j`` in ``epochs[i]``, NaN if it was not seen then.
        """
        if self._history is None:
            raise RuntimeError("No loss history: construct TrainingDynamics with history_epochs > 0.")
        kept = min(self.epochs_tracked, self.history_epochs)
        epochs = list(range(self.epochs_tracked - kept, self.epochs_tracked))
        rows = [epoch % self.history_epochs for epoch in epochs]
        return epochs, self._history[rows].cpu()

    def difficulty(self, signal: str = "loss") -> Tensor:
        """Per-example difficulty from ``signal``, higher is harder; NaN for unseen examples."""
        return difficulty_scores(self.signals(), signal)

    def select(
        self,
        signal: str = "loss",
        *,
        k: int | None = None,
        fraction: float | None = None,
        hardest: bool = True,
    ) -> Tensor:
        """Ids of the ``k`` (or ``fraction``) hardest examples by ``signal``, or the easiest.

        Best first; with sharded tables, this rank's ids of the selection, in id order (a collective).

        Examples:
            >>> TrainingDynamics(num_examples=4).select("loss", k=2)  # nothing seen yet
            tensor([], dtype=torch.int64)
        """
        if self.table_shard is None:
            return select_indices(self.difficulty(signal), k=k, fraction=fraction, largest=hardest)
        count = selection_size(self.num_examples or 0, k=k, fraction=fraction)
        scores = self.difficulty(signal)
        seen = int(self.table_shard.total((~scores.isnan()).sum().reshape(1)))  # NaN (unseen) is never selected
        return self.table_shard.easiest_set(scores, min(count, seen), hardest=hardest)

    # ----------------------------------------------------------------------------------- export

    def to_dataset(self) -> datasets.Dataset:
        """The signals as a Hugging Face ``datasets.Dataset``: one row per example id, one column per signal.

        With sharded tables, the rows of this rank's ids.
        """
        try:
            import datasets
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("to_dataset needs `datasets`: pip install 'lightning-curricula[hf]'.") from error
        return datasets.Dataset.from_dict({key: value.numpy() for key, value in self.signals().items()})

    def to_parquet(self, path: str | Path) -> None:
        """Write `to_dataset` as a parquet file.

        With sharded tables ``path`` is a directory: every rank (each must call this) writes its rows as
        ``shard-<r>-of-<W>.parquet``, and ``datasets.load_dataset("parquet", data_files=sorted(paths),
        split="train")`` loads them as one dataset, a row per id in id order.
        """
        if self.table_shard is None:
            self.to_dataset().to_parquet(str(path))
        else:
            write_parquet_shard(self.signals(), path, self.table_shard.comm)

    def to_csv(self, path: str | Path) -> None:
        """Write `to_dataset` as a CSV file, without a pandas index column (unsharded tables only)."""
        if self.table_shard is not None:
            raise ValueError("Sharded tables are written one file per rank: use to_parquet(directory).")
        self.to_dataset().to_csv(str(path), index=False)

    # ----------------------------------------------------------------------------------- internals

    def _allocate_accumulator(self, classification: bool, device: torch.device) -> None:
        if self.num_examples is None:
            raise RuntimeError("TrainingDynamics.update called before the dataset size is known.")
        if self.sharded and self.table_shard is None:
            raise RuntimeError("Sharded tables are set up when training starts: track a Trainer's fit.")
        if not self._tables:
            self._set_tables(T.new_tables(self._rows(), classification=False, counts=self._count_dtype()))
        # Sharded: no per-example rows (the visits are recorded instead), only the scalar slots.
        rows = 0 if self.table_shard is not None else self.num_examples
        self._layout = T.Layout(rows, classification, self._world_size)
        self._accumulator = T.new_accumulator(self._layout, device)
        self._to(device)

    def _rows(self) -> int:
        """Rows of this rank's tables: every id, or the ids of its shard."""
        assert self.num_examples is not None
        if self.table_shard is None:
            return self.num_examples
        return self.table_shard.stop - self.table_shard.start

    def _start_shard(self, trainer: pl.Trainer) -> None:
        """This rank's slice of the ids, the collectives, and the directory of its checkpoint shards."""
        assert self.num_examples is not None
        if self.table_shard is None or self.table_shard.num_examples != self.num_examples:
            self.table_shard = TableShard.of_process_group(self.num_examples)
        comm = self.table_shard.comm
        if comm.world_size != trainer.world_size:
            raise RuntimeError(
                f"TrainingDynamics(sharded=True) found {comm.world_size} ranks in torch.distributed but the Trainer "
                f"has {trainer.world_size}: sharded tables need the Trainer's process group."
            )
        if self.shard_dir is None:
            self.shard_dir = Path(trainer.default_root_dir) / "dynamics_shards" / self.name
        if self._tables and self._tables["visits"].numel() != self._rows():
            raise ValueError(
                f"TrainingDynamics(name={self.name!r}, sharded=True) was given tables of "
                f"{self._tables['visits'].numel()} rows, but rank {comm.rank} of {comm.world_size} owns "
                f"{self._rows()} of the {self.num_examples} ids: a checkpoint of unsharded tables resumes with "
                "sharded=False."
            )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # The ranks exist now, before Lightning builds the first train dataloader: its sampler plans from the shard.
        if self.sharded and self.num_examples is not None and self.table_shard is None:
            self.table_shard = TableShard.of_process_group(self.num_examples)
        if self.sharded and stage == "fit":  # before a checkpoint is loaded, which gives a resumed fit its run's id
            self.run_id = str(trainer.strategy.broadcast(uuid.uuid4().hex, src=0))
            self._newest_shards = None
            self._referenced_shards = set()
            self._seen_checkpoints = set()
            self._checkpoint_shards = {}

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Every rank (Lightning dumps the checkpoint on each) has written its shard of this one in `state_dict`.
        if self.delete_stale_shards and self.state_key in checkpoint.get("callbacks", {}):
            self._delete_stale_shards(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The last save's ModelCheckpoint has removed the checkpoints it replaced (after the save): their shards go.
        if self.delete_stale_shards:
            self._delete_stale_shards(trainer)

    def _delete_stale_shards(self, trainer: pl.Trainer) -> None:
        """Delete this run's shards whose checkpoints are gone: rank 0 finds them, every rank deletes its own files.

        Called on every rank alike (one broadcast), after this fit wrote shards; a no-op before.
        """
        if self.table_shard is None or self._newest_shards is None:
            return
        assert self.shard_dir is not None
        assert self.run_id is not None
        stale = self._stale_shards(trainer, newest=self._newest_shards) if trainer.is_global_zero else []
        stale = trainer.strategy.broadcast(stale, src=0)
        comm = self.table_shard.comm
        name = shard_file_name(comm.rank, comm.world_size, suffix="pt")
        for epochs in stale:
            directory = _shard_epoch_directory(self.shard_dir, self.run_id, epochs)
            (directory / name).unlink(missing_ok=True)
            (directory / name).with_suffix(".partial").unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty until the last rank's file is gone
                directory.rmdir()
        self._referenced_shards -= set(stale)

    def _stale_shards(self, trainer: pl.Trainer, *, newest: int) -> list[int]:
        """The epochs tracked of this run's shards whose checkpoints are gone; ``newest`` was just written.

        A shard set ``shard_dir/<run_id>/epoch=<e>`` is stale once a checkpoint file of a ``ModelCheckpoint`` of this
        ``Trainer`` was seen to hold it (in its ``dirpath``, or among its ``best_k_models``, ``last_model_path``,
        ``best_model_path``) and no such file holds it now: neither one the callbacks list now nor one seen before
        that still exists (``best_model_path`` may leave a file it no longer names). Never stale: the newest shards,
        shards of another run (another run id), shards only checkpoints elsewhere hold (never seen), and none while a
        checkpoint file cannot be read with ``torch.load(weights_only=True)`` (it might hold any of them).
        """
        referenced: set[int] = set()
        holders: set[Path] = set()
        for path in sorted(set(_checkpoint_files(trainer)) | self._seen_checkpoints):
            try:
                run_id, epochs = self._shard_reference(path)
            except FileNotFoundError:  # removed since it was listed
                continue
            except Exception as error:  # noqa: BLE001 - an unreadable file might hold any shard: keep them all
                rank_zero_warn(
                    f"TrainingDynamics(name={self.name!r}) keeps every shard of this run: it cannot read "
                    f"the checkpoint {path} with torch.load(weights_only=True) ({type(error).__name__}: {error})."
                )
                return []
            if run_id == self.run_id:
                referenced.add(epochs)
                holders.add(path)
        self._referenced_shards |= referenced
        self._seen_checkpoints = holders
        return sorted(self._referenced_shards - referenced - {newest})

    def _shard_reference(self, path: Path) -> tuple[str | None, int]:
        """``(run id, epochs tracked)`` of the shards the checkpoint file ``path`` holds; ``(None, -1)`` for none.

        Read with ``mmap=True``: the tensors' bytes are mapped, not read. Cached by path, inode, modification time and
        size.
        """
        stat = path.stat()
        key = (str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if key not in self._checkpoint_shards:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            state = checkpoint.get("callbacks", {}).get(self.state_key, {}) if isinstance(checkpoint, dict) else {}
            info = state.get("shard") if isinstance(state, dict) else None
            reference = (None, -1) if not info else (info.get("run_id"), int(info["epochs_tracked"]))
            self._checkpoint_shards[key] = reference
        return self._checkpoint_shards[key]

    def _save_shard(self, state: dict[str, Any]) -> dict[str, Any]:
        """Write this rank's ``state`` to its shard file; what the checkpoint (rank 0's copy) keeps: where it is."""
        assert self.table_shard is not None
        assert self.shard_dir is not None
        if self.run_id is None:
            raise RuntimeError(
                f"TrainingDynamics(name={self.name!r}, sharded=True) saves its shards from a Trainer's fit, under the "
                "run's id: checkpoint it through the Trainer."
            )
        comm = self.table_shard.comm
        # The tables change only at epoch ends; the run id keeps other runs in the same shard_dir out.
        directory = _shard_epoch_directory(self.shard_dir, self.run_id, self.epochs_tracked)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / shard_file_name(comm.rank, comm.world_size, suffix="pt")
        partial = path.with_suffix(".partial")
        torch.save(state | {"rank": comm.rank, "world_size": comm.world_size, "run_id": self.run_id}, partial)
        os.replace(partial, path)  # a crash while writing leaves the previous file whole
        self._newest_shards = self.epochs_tracked
        return {
            "version": STATE_VERSION,
            "shard": {
                "version": SHARD_STATE_VERSION,
                "run_id": self.run_id,
                "directory": str(directory),
                "world_size": comm.world_size,
                "num_examples": self.num_examples,
                "epochs_tracked": self.epochs_tracked,
            },
        }

    def _load_shard(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """This rank's state, read from the shard file the checkpoint points to."""
        info = state_dict["shard"]
        if not self.sharded:
            raise ValueError(
                f"The checkpoint's TrainingDynamics(name={self.name!r}) tables are sharded over {info['world_size']} "
                "ranks: resume with TrainingDynamics(sharded=True)."
            )
        version = info.get("version")
        if version not in (1, SHARD_STATE_VERSION):
            raise ValueError(
                f"The checkpoint's TrainingDynamics(name={self.name!r}) shard record has version {version!r}; this "
                f"release reads versions 1 and {SHARD_STATE_VERSION}."
            )
        world, rank = world_and_rank(None, None)
        check_world_size(int(info["world_size"]), world)
        path = Path(info["directory"]) / shard_file_name(rank, world, suffix="pt")
        if not path.is_file():
            raise FileNotFoundError(
                f"TrainingDynamics(name={self.name!r}): the checkpoint's shard for rank {rank} is missing: {path}. "
                "Each rank writes its shard next to the checkpoint (shard_dir); resume where those files are."
            )
        state: dict[str, Any] = torch.load(path, weights_only=True)
        # Known before training starts, so that the first plan of the resumed run reads the shard as a shard.
        self.table_shard = TableShard.of_process_group(int(info["num_examples"]))
        if version == 1:  # written before shard files carried their fit's id: nothing to check them against
            rank_zero_warn(
                f"TrainingDynamics(name={self.name!r}): the checkpoint's shards ({info['directory']}) were written "
                "without a run id, so nothing shows that another fit in the same shard_dir did not overwrite them."
            )
        elif state.get("run_id") != info["run_id"]:
            raise ValueError(
                f"TrainingDynamics(name={self.name!r}): the checkpoint belongs to the run with run id "
                f"{info['run_id']!r} and expects its shards in {info['directory']}, but {path} holds the shard of run "
                f"id {state.get('run_id')!r}. Resume from the shard files written with this checkpoint."
            )
        if state.get("epochs_tracked") != info["epochs_tracked"] or state.get("rank") != rank:
            raise ValueError(
                f"{path} holds rank {state.get('rank')}'s shard after {state.get('epochs_tracked')} "
                f"epochs; the checkpoint expects rank {rank}'s after {info['epochs_tracked']}."
            )
        if version != 1:  # the resumed run writes on under its own id (a version 1 run: under this fit's new one)
            self.run_id = str(info["run_id"])
        return state

    def _count_dtype(self) -> torch.dtype:
        """The dtype of the count tables: one that holds ``max_epochs`` (one byte up to 255); widened if outgrown."""
        return T.count_dtype(self._max_epochs) if self._max_epochs is not None else torch.uint8

    def _set_tables(self, tables: dict[str, Tensor]) -> None:
        self._tables = tables
        self._snapshot = None

    def _check_ids(self, index: Tensor) -> None:
        # One host sync, on the first batch of each fit, to fail early on ids out of range.
        assert self.num_examples is not None
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_examples):
            raise ValueError(
                f"Example ids must be in [0, {self.num_examples}), got ids from {int(index.min())} to "
                f"{int(index.max())}. Is the dataset wrapped in WithIndex, and is num_examples its length?"
            )
        self._checked_ids = True

    def _to(self, device: torch.device) -> None:
        self._tables = {key: value.to(device) for key, value in self._tables.items()}
        if self._history is not None:
            self._history = self._history.to(device)
        if self._accumulator is not None:
            self._accumulator = self._accumulator.to(device)


def _dataset_size(trainer: pl.Trainer) -> int | None:
    loader = trainer.train_dataloader
    dataset = getattr(loader, "dataset", None)
    if isinstance(loader, Mapping) or dataset is None:
        return None
    examples = getattr(dataset, "num_examples", None)  # a stream of batches knows its examples (ShardedStream)
    if isinstance(examples, int):
        return examples
    try:
        return len(dataset)
    except TypeError:
        return None


def _shard_epoch_directory(shard_dir: Path, run_id: str, epochs_tracked: int) -> Path:
    """Where each rank writes its shard of a checkpoint taken after ``epochs_tracked`` epochs of the fit ``run_id``."""
    return shard_dir / run_id / f"epoch={epochs_tracked}"


def _checkpoint_files(trainer: pl.Trainer) -> list[Path]:
    """The local checkpoint files of the Trainer's ``ModelCheckpoint`` callbacks: their folders' and those they hold."""
    files: set[Path] = set()
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.dirpath is not None and Path(callback.dirpath).is_dir():
            files.update(Path(callback.dirpath).glob(f"*{callback.FILE_EXTENSION}"))
        held = [*callback.best_k_models, callback.last_model_path, callback.best_model_path]
        files.update(Path(path) for path in held if path and Path(path).is_file())
    return sorted(path for path in files if path.is_file())


def find_dynamics(trainer: pl.Trainer, name: str | None = None) -> TrainingDynamics | None:
    """The `TrainingDynamics` on ``trainer`` (the one called ``name`` when there are several), or ``None``."""
    trackers = [c for c in trainer.callbacks if isinstance(c, TrainingDynamics)]  # type: ignore[attr-defined]
    if name is not None:
        trackers = [tracker for tracker in trackers if tracker.name == name]
    if len(trackers) > 1:
        names = [tracker.name for tracker in trackers]
        raise ValueError(f"The Trainer has several TrainingDynamics {names}: say which with dynamics_name=.")
    return trackers[0] if trackers else None

"""`OnlineBatchSelection`: selection inside the step for any LightningModule that scores its batch."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from lightning_curricula.distributed._keyed import derived_seed
from lightning_curricula.step.selection import (
    EXAMPLE_METHODS,
    TOKEN_METHODS,
    Selection,
    check_keep,
    kept_count,
    select_examples,
    select_tokens,
)

__all__ = ["BatchPreselection", "OnlineBatchSelection", "find_online_selection"]

STATE_VERSION = 2

# Rows of the counters: this epoch's and the run's totals are both kept; the epoch row is all-reduced once.
# SCORED / KEPT: examples scored by a forward and kept among them; RECALLED / KEPT_RECALLED: the same for
# examples selected by their remembered scores, without a forward (``rescore_every != 1``).
_SCORED, _KEPT, _SCORED_TOKENS, _KEPT_TOKENS, _CALLS, _RECALLED, _KEPT_RECALLED = range(7)
_ROWS = 7
_ROWS_IN_VERSION_1 = 5
# Remembered scores are a dense table by id (5 bytes each with the changed mask): 2**30 ids is 5 GiB.
MAX_REMEMBERED_ID = 2**30 - 1


class OnlineBatchSelection(Callback):
    """Select, inside ``training_step``, which examples or tokens of a scored batch to backpropagate.

    The module scores its batch with a forward pass without gradients (the loss for Selective Backprop,
    `reducible_loss` for RHO-LOSS, `excess_loss` per token for Rho-1), calls `select` (or
    `select_tokens`) on the detached scores, and trains on the kept part only::

        def training_step(self, batch, batch_idx):
            selection = find_online_selection(self.trainer)
            with torch.no_grad():
                scores = F.cross_entropy(self(batch["x"]), batch["y"], reduction="none")
            kept = selection.select(scores)
            x, y = batch["x"][kept.positions], batch["y"][kept.positions]
            return weighted_mean(F.cross_entropy(self(x), y, reduction="none"), kept.weights)

    The callback owns the random stream of the ``percentile`` and ``random`` methods and the cost
    counters. Every `select` charges the scoring forward of all ``n`` examples (``scored``) and the
    training forward + backward of the ``k`` kept (``kept``). At each epoch end the epoch's counters
    are summed over ranks in one collective and written to the Trainer's loggers (global rank 0):
    ``<name>/kept_share``, ``<name>/scored_examples``, ``<name>/kept_examples`` (per epoch, the token
    counts too when `select_tokens` ran, ``recalled_examples`` when `select_remembered` did), and the
    run's ``<name>/scoring_forwards``, ``<name>/forward_only_passes`` (scored, not kept: forwards
    without a backward) and ``<name>/backward_passes``. They are also in `epoch_metrics`.

    **Remembered scores** (``rescore_every != 1``, Stale-SB of Jiang et al. 2019): the callback keeps the
    latest score of every example id, and only every ``rescore_every``-th epoch (the first included;
    with ``None`` the first only) scores with a forward. In the epochs between, `select_remembered`
    selects each batch by the scores remembered for its ids, so the scoring forward is skipped; the
    module then reports the kept examples' training losses with `remember`, which keeps their scores
    fresh for free. Every selection of an epoch reads the scores remembered before it began: what its
    steps remember counts from the next epoch (an id the plan visits twice is selected by the same score
    both times), so a loader that selects ahead of the steps, however far its workers prefetch, selects
    exactly what they would::

        kept = selection.select_remembered(batch["index"])
        if kept is None:  # a scoring epoch, or an id without a remembered score
            with torch.no_grad():
                scores = F.cross_entropy(self(batch["x"]), batch["y"], reduction="none")
            kept = selection.select(scores, index=batch["index"])
        losses = F.cross_entropy(self(batch["x"][kept.positions]), batch["y"][kept.positions], reduction="none")
        selection.remember(batch["index"][kept.positions], losses)

    **Selecting before loading**: a train loader made by `curriculum_dataloader` selects the batches of
    an epoch between scoring epochs itself, when every example has a remembered score (Jiang et al.'s
    order): it splits the rank's shard into the batches the loader would have made, keeps each one's
    share by the remembered scores, and loads only the kept examples, in batches of
    ``round(keep * batch_size)``. The step's `select_remembered` then returns the whole batch (with the
    selection weights the loader drew), so the module above runs unchanged, while the dropped examples
    are neither fetched nor augmented. It selects exactly what the step would have, in the same random
    stream: the ``k``-th batch of the epoch draws from the stream position the step's ``k``-th selection
    would have, however far ahead the loader's workers fetch, and the counters and the stream position
    advance when the step takes the batch. The weights wait for the step by *visit*, not by id (a plan
    drawn with replacement visits an id more than once, with other weights): `select_remembered` takes
    the oldest batch the loader selected with exactly the step's ids, and fails naming them when there is
    none. ``select_before_loading=False`` keeps the selection in the step.

    Methods (the selection functions of `lightning_curricula.step.selection`): ``"top_k"`` (deterministic,
    Selective Backprop's deterministic variant, RHO-LOSS, Rho-1), ``"percentile"`` (Selective Backprop:
    kept with probability rising with the loss percentile, ``beta`` its sharpness) and ``"random"`` (the
    random twin at the same kept share). Jiang et al. 2019, "Accelerating Deep Learning by Focusing on
    the Biggest Losers"; Mindermann et al., ICML 2022 (RHO-LOSS); Lin et al., NeurIPS 2024 (Rho-1).

    Args:
        keep: the kept share of each batch (or of its loss tokens), in ``(0, 1]``.
        method: ``"top_k"``, ``"percentile"`` or ``"random"``; token selection takes ``"top_k"`` or
            ``"random"``.
        beta: the ``percentile`` method's sharpness, ``>= 0``.
        unbiased: weight the ``percentile`` method's kept examples by their inverse inclusion
            probability (see `percentile_selection`); otherwise weights are 1.
        seed: seed of the random stream; the same on every rank (each rank draws its own stream from it).
        name: prefix of the logged metrics and part of ``state_key``.
        rescore_every: score with a forward every this many epochs and select by remembered scores in the
            epochs between (see above); ``None`` scores in the first epoch only; 1 (the default) scores
            every batch and remembers nothing.
        select_before_loading: with ``rescore_every != 1``, let a `curriculum_dataloader` select the
            batches of the epochs between scoring epochs before loading them (see above).

    Examples:
        >>> selection = OnlineBatchSelection(keep=0.5)
        >>> selection.select(torch.tensor([0.3, 2.0, 0.1, 0.9])).positions
        tensor([1, 3])

    Note:
        **DDP**: each rank selects within its own batch; the ``percentile`` and ``random`` methods
        draw from a private generator seeded from ``(seed, rank, call)``, so ranks draw different
        streams and no global RNG is touched. The counters are summed over ranks once per epoch (one
        all-reduce of seven numbers); nothing else communicates unless scores are remembered.
        **Resume**: ``state_dict`` holds the number of `select` calls so far (the position in every
        rank's stream: a resumed run draws exactly what the uninterrupted run draws next, on every
        rank, although only rank 0's state is checkpointed), the counters and the remembered scores;
        ``"top_k"`` needs no random state. Selection runs on detached scores, so automatic and manual
        optimisation, gradient accumulation and mixed precision work unchanged.
        **Remembered scores** are one float32 per example id (a dense table up to the largest id
        seen, on the CPU, and a copy of it that an epoch between scoring epochs selects by; ids above
        ``2**30 - 1`` are refused). Each epoch end merges what the ranks
        remembered in two more all-reduces (the table's size, then the scores changed this epoch with
        their counts; an id changed on two ranks, a padding repeat, gets the mean), so every rank, and
        the checkpoint, has them all.
        Resume from epoch-end checkpoints: a mid-epoch one holds only rank 0's changes of that epoch.
        Selecting before loading, the batches the loader fetched ahead are not checkpointed (the stream
        position counts the batches the step took): a resumed loader selects its batches again.
    """

    def __init__(
        self,
        *,
        keep: float,
        method: Literal["top_k", "percentile", "random"] = "top_k",
        beta: float = 1.0,
        unbiased: bool = False,
        seed: int = 0,
        name: str = "selection",
        rescore_every: int | None = 1,
        select_before_loading: bool = True,
    ) -> None:
        check_keep(keep)
        if method not in EXAMPLE_METHODS:
            raise ValueError(f"method must be one of {EXAMPLE_METHODS}, got {method!r}.")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < float("inf"):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}.")
        if unbiased and method != "percentile":
            raise ValueError(f"unbiased=True reweights the 'percentile' method only, got method={method!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        if not name:
            raise ValueError("name must be a non-empty string.")
        if rescore_every is not None and (
            isinstance(rescore_every, bool) or not isinstance(rescore_every, int) or rescore_every < 1
        ):
            raise ValueError(
                f"rescore_every must be an integer >= 1 or None (the first epoch only), got {rescore_every!r}."
            )
        if not isinstance(select_before_loading, bool):
            raise ValueError(f"select_before_loading must be True or False, got {select_before_loading!r}.")
        self.keep = float(keep)
        self.method = method
        self.beta = float(beta)
        self.unbiased = unbiased
        self.seed = seed
        self.name = name
        self.rescore_every = rescore_every
        self.select_before_loading = select_before_loading
        self.rank = 0
        self.calls = 0
        self.epoch = 0  # the Trainer's current epoch, set when it starts: it decides scoring epochs
        self._preselected_epoch: int | None = None  # the epoch whose batches the train loader selects
        # The batches the loader selected and the step has not taken yet, oldest first: (ids, weights, size
        # before selection, stream position). By visit, not by id: a plan with repeats visits an id twice.
        self._preselected: deque[_Preselected] = deque()
        self._preselection_start = 0  # the stream position (calls) when the loader's pass over the shard began
        self.epoch_metrics: dict[str, float] = {}
        # Python ints, not tensors: ddp_spawn moves a callback's CPU tensors to memory shared by all ranks.
        self._epoch = [0] * _ROWS  # counts since the epoch began, this rank
        self._totals = [0] * _ROWS  # all ranks, finished epochs
        # Empty until scores are remembered, then replaced by tensors grown inside the process (ddp_spawn
        # shares the CPU tensors it pickles between ranks, so nothing is written into these):
        self._memory = torch.empty(0)  # float32 score by example id, NaN where unknown
        self._changed = torch.empty(0, dtype=torch.bool)  # ids remembered on this rank since the last epoch end
        # What an epoch between scoring epochs selects by: the scores remembered before it began (a copy of
        # _memory taken at its first selection), so the scores its steps remember count from the next epoch.
        self._selecting: tuple[int, Tensor] | None = None  # (epoch, scores by id)

    # ----------------------------------------------------------------------------------- selecting

    def select(self, scores: Tensor, *, keep: float | None = None, index: Tensor | None = None) -> Selection:
        """Kept positions (ascending) and weights of a batch scored by ``scores`` ``(n,)``, detached.

        ``keep`` overrides the share for this call (a schedule, say). ``index``, the examples' ids, has
        the scores remembered (with ``rescore_every != 1``). Charges ``n`` scored and ``k`` kept examples.
        """
        if self.preselected:
            raise RuntimeError(
                f"Epoch {self.epoch}'s batches were selected by the train loader before loading (select_before_loading"
                "=True): select_remembered returns each of them whole; call it before scoring, or set "
                "select_before_loading=False."
            )
        if index is not None:
            self.remember(index, scores)
        selection = self._select(scores, keep)
        self._count(_SCORED, scores.numel(), _KEPT, selection.positions.numel())
        return selection

    @property
    def scoring_epoch(self) -> bool:
        """Whether this epoch scores every batch with a forward: always with ``rescore_every=1``."""
        return self._is_scoring(self.epoch)

    @property
    def selects_before_loading(self) -> bool:
        """Whether a `curriculum_dataloader` selects the batches of the epochs between scoring epochs before loading."""
        return self.remembers_scores and self.select_before_loading

    @property
    def remembers_scores(self) -> bool:
        """Whether scores are remembered between scoring epochs (``rescore_every`` is not 1)."""
        return self.rescore_every != 1

    def _is_scoring(self, epoch: int) -> bool:
        return epoch == 0 if self.rescore_every is None else epoch % self.rescore_every == 0

    @property
    def preselected(self) -> bool:
        """Whether the train loader selected this epoch's batches before loading them (see the class notes)."""
        return self._preselected_epoch == self.epoch  # only ever an epoch between scoring epochs

    def select_remembered(self, index: Tensor, *, keep: float | None = None) -> Selection | None:
        """Select the batch of ids ``index`` ``(n,)`` by its remembered scores, without a scoring forward.

        ``None`` in a scoring epoch, or when one of the ids has no remembered score: then score the batch
        with a forward and call ``select(scores, index=index)``. Charges ``n`` examples selected from
        memory (``recalled``, not scored) and the ``k`` kept. When the loader selected this epoch's
        batches already (`preselected`), every example of the batch, with the weights the loader drew
        (charged by the loader).
        """
        if self.scoring_epoch:
            return None
        if self.preselected:
            if keep is not None and keep != self.keep:
                raise ValueError(f"The loader selected this epoch's batches with keep={self.keep}, not keep={keep}.")
            weights = self._take_preselected(_example_ids(index))
            return Selection(torch.arange(index.shape[0], device=index.device), weights.to(index.device))
        ids = _example_ids(index)
        table = self._scores_to_select_by(self.epoch)
        if ids.numel() and int(ids.max()) >= table.numel():
            return None
        scores = table[ids]
        if bool(scores.isnan().any()):
            return None
        selection = self._recall(scores, keep)
        return Selection(selection.positions.to(index.device), selection.weights.to(index.device))

    def _recall(self, scores: Tensor, keep: float | None) -> Selection:
        selection = self._select(scores, keep)
        self._count(_RECALLED, scores.numel(), _KEPT_RECALLED, selection.positions.numel())
        return selection

    def _start_preselection(self) -> None:
        """A pass of the loader over the shard begins: batches selected by an earlier pass will not be loaded.

        Lightning iterates a loader re-created for the epoch twice when it has workers (the first
        iterator's prefetched batches are dropped), and a resumed run's loader starts over: each pass
        selects from the stream position the step is at.
        """
        self._preselected.clear()
        self._preselection_start = self.calls

    def _preselect(self, ids: Tensor, number: int) -> Tensor:
        """The kept positions of the pass's ``number``-th batch, of ``ids``; its weights wait for the step.

        Drawn from the stream position the step's selection of that batch would have; nothing is
        counted until `select_remembered` takes the batch.
        """
        call = self._preselection_start + number + 1
        assert self._preselected_epoch is not None  # set by batch_preselection, which made the loader
        kept = self._select(self._scores_to_select_by(self._preselected_epoch)[ids], None, call=call)
        self._preselected.append(_Preselected(ids[kept.positions], kept.weights, ids.numel(), call))
        return kept.positions

    def _take_preselected(self, ids: Tensor) -> Tensor:
        """The weights the loader drew for its oldest batch of exactly ``ids``, counted now the step takes it."""
        position = next((p for p, batch in enumerate(self._preselected) if torch.equal(batch.ids, ids)), None)
        if position is None:
            pending = [batch.ids.tolist() for batch in list(self._preselected)[:3]]
            raise ValueError(
                f"select_remembered got the ids {ids.tolist()}, which are none of the batches the loader selected "
                f"before loading and the step has not taken yet ({len(self._preselected)}, the oldest {pending}). "
                "In an epoch selected before loading call it once per batch, with the batch's own "
                "batch['index'], or set select_before_loading=False."
            )
        found = self._preselected[position]
        del self._preselected[position]  # in order, the oldest: position 0 (a loader with in_order=False may differ)
        self.calls += 1
        self._epoch[_CALLS] += 1
        self._count(_RECALLED, found.size, _KEPT_RECALLED, found.ids.numel())
        return found.weights

    def batch_preselection(
        self, epoch: int, num_examples: int, batch_size: int, *, drop_last: bool = False
    ) -> BatchPreselection | None:
        """What a train loader for ``epoch`` selects before loading, or ``None`` (select in the step).

        Not ``None`` in an epoch between scoring epochs when ``select_before_loading`` is on and every
        one of the ``num_examples`` examples has a remembered score; the epoch is then `preselected`.
        `curriculum_dataloader` calls it each time it builds the loader.
        """
        known = self._scores_to_select_by(epoch)[:num_examples]
        ready = (
            self.select_before_loading
            and not self._is_scoring(epoch)
            and known.numel() == num_examples > 0
            and not bool(known.isnan().any())
        )
        self._preselected_epoch = epoch if ready else None
        self._preselected.clear()  # a new loader: what the last one fetched ahead is never trained on
        return BatchPreselection(self, batch_size, drop_last) if ready else None

    def _scores_to_select_by(self, epoch: int) -> Tensor:
        """The remembered scores as of ``epoch``'s first selection by them: what every selection of the epoch reads.

        Scores remembered during the epoch count from the next one, so a loader that selects ahead of the
        steps (its workers' prefetch) selects exactly what the steps would, even when ids repeat.
        """
        if self._selecting is None or self._selecting[0] != epoch:
            self._selecting = (epoch, self._memory.clone())
        return self._selecting[1]

    def remember(self, index: Tensor, scores: Tensor) -> None:
        """Remember ``scores`` ``(n,)`` as the latest of the examples ``index`` ``(n,)`` (if ``rescore_every != 1``).

        Call it with the kept examples' training losses (or the score made of them, such as the
        reducible loss) to keep their remembered scores fresh without another forward.
        """
        if not self.remembers_scores:
            return
        ids = _example_ids(index)
        if tuple(scores.shape) != tuple(ids.shape):
            raise ValueError(
                f"scores have shape {tuple(scores.shape)} but index has {tuple(ids.shape)}; they must match."
            )
        if ids.numel() == 0:
            return
        self._grow(int(ids.max()) + 1)
        self._memory[ids] = scores.detach().float().cpu()
        self._changed[ids] = True

    def _select(self, scores: Tensor, keep: float | None, *, call: int | None = None) -> Selection:
        """Select by ``scores`` at the next stream position (counting it), or at ``call`` (counting nothing)."""
        share = self.keep if keep is None else check_keep(keep)
        return select_examples(
            scores.detach(),
            share,
            method=self.method,
            generator=self._next_generator() if call is None else self._generator(call),
            beta=self.beta,
            unbiased=self.unbiased,
        )

    def _grow(self, size: int) -> None:
        if size > self._memory.numel():
            missing = size - self._memory.numel()
            self._memory = torch.cat([self._memory, torch.full((missing,), math.nan)])
            self._changed = torch.cat([self._changed, torch.zeros(missing, dtype=torch.bool)])

    def select_tokens(self, scores: Tensor, mask: Tensor, *, keep: float | None = None) -> Tensor:
        """The ``(B, T)`` bool mask of kept loss tokens (Rho-1); ``method`` must be top-k or random.

        Charges ``B`` scored and ``B`` kept examples (every sequence is still backpropagated) and the
        loss tokens scored and kept.
        """
        if self.method not in TOKEN_METHODS:
            raise ValueError(f"Token selection takes method in {TOKEN_METHODS}; this callback has {self.method!r}.")
        share = self.keep if keep is None else check_keep(keep)
        method: Literal["top_k", "random"] = "random" if self.method == "random" else "top_k"
        kept = select_tokens(scores.detach(), mask, share, method=method, generator=self._next_generator())
        self._count(_SCORED, scores.shape[0], _KEPT, scores.shape[0])
        self._count(_SCORED_TOKENS, int(mask.detach().bool().sum()), _KEPT_TOKENS, int(kept.sum()))
        return kept

    def _next_generator(self) -> torch.Generator | None:
        self.calls += 1
        self._epoch[_CALLS] += 1
        return self._generator(self.calls)

    def _generator(self, call: int) -> torch.Generator | None:
        """The generator of the ``call``-th selection on this rank (``None`` for top-k, which draws nothing)."""
        if self.method == "top_k":
            return None
        return torch.Generator().manual_seed(derived_seed(self.seed, self.rank, call))

    def _count(self, scored_row: int, scored: int, kept_row: int, kept: int) -> None:
        self._epoch[scored_row] += scored
        self._epoch[kept_row] += kept

    # ----------------------------------------------------------------------------------- Lightning hooks

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.rank = trainer.global_rank

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch = trainer.current_epoch

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.remembers_scores:
            self._merge_memory(trainer, pl_module.device)
        # The counters' collective: seven integers summed over ranks (int64, never packed into floats).
        counts = torch.tensor(self._epoch, dtype=torch.int64, device=pl_module.device)
        epoch = [int(value) for value in trainer.strategy.reduce(counts, reduce_op="sum").tolist()]
        self._totals = [total + value for total, value in zip(self._totals, epoch, strict=True)]
        self._epoch = [0] * _ROWS
        self.epoch_metrics = _metrics(epoch, self._totals)
        if trainer.is_global_zero:
            # Identical on every rank already: written by rank 0 to the loggers, not synced again by self.log.
            metrics = {f"{self.name}/{key}": value for key, value in self.epoch_metrics.items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def _merge_memory(self, trainer: pl.Trainer, device: torch.device) -> None:
        """Every rank's scores remembered this epoch, on every rank: the mean where several ranks changed an id."""
        size = trainer.strategy.reduce(torch.tensor(self._memory.numel(), device=device), reduce_op="max")
        self._grow(int(size))
        changed = self._changed.float()
        sums = torch.stack([torch.where(self._changed, self._memory, 0.0), changed]).to(device)
        values, counts = trainer.strategy.reduce(sums, reduce_op="sum").cpu()
        merged = counts > 0
        self._memory[merged] = values[merged] / counts[merged]
        self._changed.zero_()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "keep": self.keep,
            "method": self.method,
            "seed": self.seed,
            "calls": self.calls,
            "totals": list(self._totals),
            "epoch": list(self._epoch),
            "remembered_scores": self._memory.clone(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(
                f"OnlineBatchSelection state has version {version!r}; this release reads versions 1 and "
                f"{STATE_VERSION}."
            )
        if state_dict["seed"] != self.seed or state_dict["method"] != self.method:
            raise ValueError(
                f"Cannot resume OnlineBatchSelection(name={self.name!r}): the checkpoint has method "
                f"{state_dict['method']!r} and seed {state_dict['seed']}, this run has method {self.method!r} "
                f"and seed {self.seed}."
            )
        self.calls = int(state_dict["calls"])
        # Version 1 had five rows and no remembered scores: the rows added since start at 0.
        padding = [0] * (_ROWS - _ROWS_IN_VERSION_1) if version == 1 else []
        self._totals = [int(value) for value in state_dict["totals"]] + padding
        self._epoch = [int(value) for value in state_dict["epoch"]] + padding
        self._memory = state_dict.get("remembered_scores", torch.empty(0)).clone().float()
        self._changed = torch.zeros(self._memory.numel(), dtype=torch.bool)
        self._preselected.clear()  # fetched ahead before the checkpoint: the resumed loader selects them again
        self._selecting = None


class _Preselected(NamedTuple):
    """A batch the loader selected before loading, waiting for the step: kept ids, their weights, and so on."""

    ids: Tensor  # the kept ids, in batch order: what the step's batch["index"] must be
    weights: Tensor  # the selection weights drawn for them
    size: int  # the visits of the batch before selection (counted as recalled)
    call: int  # the stream position it was drawn at


@dataclass(frozen=True)
class BatchPreselection:
    """Selection before loading: a `CurriculumSampler` yields only the kept examples of each batch it shards.

    Made by `OnlineBatchSelection.batch_preselection`. Each run of ``batch_size`` consecutive visits of
    the rank's shard (the batch the loader would have made) is selected by the examples' remembered
    scores, in order, in the callback's random stream; the loader batches the kept visits by
    `kept_per_batch`, so its batches are the kept parts of those batches.

    Args:
        selection: the callback whose remembered scores, share and random stream select.
        batch_size: the examples of each batch before selection (the loader's ``batch_size`` otherwise).
        drop_last: drop the last, shorter batch of the shard (the loader's ``drop_last``).
    """

    selection: OnlineBatchSelection
    batch_size: int
    drop_last: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}.")

    @property
    def kept_per_batch(self) -> int:
        """The loader's batch size: what a full batch keeps."""
        return kept_count(self.batch_size, self.selection.keep)

    def kept_length(self, shard_size: int) -> int:
        """The visits kept of a shard of ``shard_size``: the sampler's length."""
        full, rest = divmod(shard_size, self.batch_size)
        return full * self.kept_per_batch + (0 if self.drop_last else kept_count(rest, self.selection.keep))

    def kept_visits(self, indices: Tensor, weights: Tensor) -> Iterator[tuple[int, float]]:
        """``(index, plan weight)`` of the kept visits of the shard ``indices``, selected batch by batch."""
        self.selection._start_preselection()  # a generator: runs when the loader starts this pass
        end = indices.numel() - indices.numel() % self.batch_size if self.drop_last else indices.numel()
        for number, start in enumerate(range(0, end, self.batch_size)):
            batch = slice(start, start + self.batch_size)
            kept = self.selection._preselect(indices[batch], number)
            yield from zip(indices[batch][kept].tolist(), weights[batch][kept].tolist(), strict=True)


def _example_ids(index: Tensor) -> Tensor:
    ids = index.detach().cpu().long()
    if ids.ndim != 1:
        raise ValueError(f"index has shape {tuple(index.shape)}, expected (batch_size,): one id per example.")
    if ids.numel() and int(ids.min()) < 0:
        raise ValueError(f"Example ids must be >= 0 to be remembered, got {int(ids.min())}.")
    if ids.numel() and int(ids.max()) > MAX_REMEMBERED_ID:
        raise ValueError(
            f"Example id {int(ids.max())} is too large to be remembered: the scores are a dense table by id, "
            f"up to id {MAX_REMEMBERED_ID}. Number the examples 0..N-1 (WithIndex does), not by a hash."
        )
    return ids


def _metrics(epoch: list[int], totals: list[int]) -> dict[str, float]:
    selected = epoch[_SCORED] + epoch[_RECALLED]
    kept = epoch[_KEPT] + epoch[_KEPT_RECALLED]
    metrics = {
        "scored_examples": float(epoch[_SCORED]),
        "kept_examples": float(kept),
        "kept_share": kept / selected if selected else 1.0,
        "scoring_forwards": float(totals[_SCORED]),
        "forward_only_passes": float(totals[_SCORED] - totals[_KEPT]),
        "backward_passes": float(totals[_KEPT] + totals[_KEPT_RECALLED]),
    }
    if totals[_RECALLED]:
        metrics["recalled_examples"] = float(epoch[_RECALLED])
    if totals[_SCORED_TOKENS]:
        tokens = epoch[_SCORED_TOKENS]
        metrics |= {
            "scored_tokens": float(tokens),
            "kept_tokens": float(epoch[_KEPT_TOKENS]),
            "kept_token_share": epoch[_KEPT_TOKENS] / tokens if tokens else 1.0,
        }
    return metrics


def find_online_selection(trainer: pl.Trainer, name: str | None = None) -> OnlineBatchSelection:
    """The `OnlineBatchSelection` among ``trainer.callbacks`` (the one called ``name`` when several).

    Raises:
        ValueError: none, or several and no ``name``, or none with that ``name``.

    Examples:
        >>> trainer = pl.Trainer(callbacks=[OnlineBatchSelection(keep=0.5)], logger=False, enable_checkpointing=False)
        >>> find_online_selection(trainer).keep
        0.5
    """
    found = [callback for callback in trainer.callbacks if isinstance(callback, OnlineBatchSelection)]  # type: ignore[attr-defined]
    if name is not None:
        found = [callback for callback in found if callback.name == name]
    if len(found) != 1:
        names = [callback.name for callback in found]
        wanted = "" if name is None else f" named {name!r}"
        raise ValueError(
            f"Expected one OnlineBatchSelection{wanted} in trainer.callbacks, found {len(found)} {names}; "
            "add it with Trainer(callbacks=[OnlineBatchSelection(keep=...)]) or pass name=."
        )
    return found[0]

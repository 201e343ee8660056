"""`OnlineBatchSelection`: selection inside the step for any LightningModule that scores its batch."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from lightning_curricula.policies._base import derived_seed
from lightning_curricula.step_selection import (
    EXAMPLE_METHODS,
    TOKEN_METHODS,
    Selection,
    check_keep,
    select_examples,
    select_tokens,
)

__all__ = ["OnlineBatchSelection", "find_online_selection"]

STATE_VERSION = 1

# Rows of the counters: this epoch's and the run's totals are both kept; the epoch row is all-reduced once.
_SCORED, _KEPT, _SCORED_TOKENS, _KEPT_TOKENS, _CALLS = range(5)
_ROWS = 5


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
    counts too when `select_tokens` ran), and the run's ``<name>/forward_only_passes`` (scored, not kept:
    forwards without a backward) and ``<name>/backward_passes``. They are also in `epoch_metrics`.

    Methods (the selection functions of `lightning_curricula.step_selection`): ``"top_k"`` (deterministic,
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

    Examples:
        >>> selection = OnlineBatchSelection(keep=0.5)
        >>> selection.select(torch.tensor([0.3, 2.0, 0.1, 0.9])).positions
        tensor([1, 3])

    Note:
        **DDP**: each rank selects within its own batch; the ``percentile`` and ``random`` methods
        draw from a private generator seeded from ``(seed, rank, call)``, so ranks draw different
        streams and no global RNG is touched. The counters are summed over ranks once per epoch (one
        all-reduce of five numbers); nothing else communicates. **Resume**: ``state_dict`` holds the
        number of `select` calls so far (the position in every rank's stream: a resumed run draws
        exactly what the uninterrupted run draws next, on every rank, although only rank 0's state is
        checkpointed) and the counters; ``"top_k"`` needs no state at all. Selection runs on detached
        scores, so automatic and manual optimisation, gradient accumulation and mixed precision work
        unchanged.
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
        self.keep = float(keep)
        self.method = method
        self.beta = float(beta)
        self.unbiased = unbiased
        self.seed = seed
        self.name = name
        self.rank = 0
        self.calls = 0
        self.epoch_metrics: dict[str, float] = {}
        # Python ints, not tensors: ddp_spawn moves a callback's CPU tensors to memory shared by all ranks.
        self._epoch = [0] * _ROWS  # counts since the epoch began, this rank
        self._totals = [0] * _ROWS  # all ranks, finished epochs

    # ----------------------------------------------------------------------------------- selecting

    def select(self, scores: Tensor, *, keep: float | None = None) -> Selection:
        """Kept positions (ascending) and weights of a batch scored by ``scores`` ``(n,)``, detached.

        ``keep`` overrides the share for this call (a schedule, say). Charges ``n`` scored and ``k``
        kept examples.
        """
        share = self.keep if keep is None else check_keep(keep)
        selection = select_examples(
            scores.detach(),
            share,
            method=self.method,
            generator=self._next_generator(),
            beta=self.beta,
            unbiased=self.unbiased,
        )
        self._count(_SCORED, scores.numel(), _KEPT, selection.positions.numel())
        return selection

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
        if self.method == "top_k":
            return None
        return torch.Generator().manual_seed(derived_seed(self.seed, self.rank, self.calls))

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
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The one collective of the epoch: five integers summed over ranks (int64, never packed into floats).
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
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(
                f"OnlineBatchSelection state has version {state_dict.get('version')!r}; this release reads "
                f"version {STATE_VERSION}."
            )
        if state_dict["seed"] != self.seed or state_dict["method"] != self.method:
            raise ValueError(
                f"Cannot resume OnlineBatchSelection(name={self.name!r}): the checkpoint has method "
                f"{state_dict['method']!r} and seed {state_dict['seed']}, this run has method {self.method!r} "
                f"and seed {self.seed}."
            )
        self.calls = int(state_dict["calls"])
        self._totals = [int(value) for value in state_dict["totals"]]
        self._epoch = [int(value) for value in state_dict["epoch"]]


def _metrics(epoch: list[int], totals: list[int]) -> dict[str, float]:
    scored, kept = epoch[_SCORED], epoch[_KEPT]
    metrics = {
        "scored_examples": float(scored),
        "kept_examples": float(kept),
        "kept_share": kept / scored if scored else 1.0,
        "forward_only_passes": float(totals[_SCORED] - totals[_KEPT]),
        "backward_passes": float(totals[_KEPT]),
    }
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

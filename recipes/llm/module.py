"""`CausalLMFineTuner`: supervised fine-tuning of a causal LM on response tokens, with per-example losses.

It follows the `TrainingDynamics` contract for sequence models: ``training_step`` returns ``losses``,
one number per sequence (the mean loss over its response tokens), and the example ids come from
``batch["index"]``. The loss it optimises is `weighted_token_mean`: the plain mean over the batch's
response tokens, and for a policy that reweights (InfoBatch, importance sampling) the weighted sum over
a fixed token count (the batch size times the mean loss tokens per sequence), which stays unbiased when
sequence length and difficulty are related.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning_curricula.recipes.llm.data import IGNORE_INDEX, CausalLMCollator, Scorer, make_scorer, response_only
from lightning_curricula.recipes.llm.export import export_hugging_face
from lightning_curricula.recipes.llm.model import SMOLLM2, TINY, load_causal_lm, load_tokenizer
from lightning_curricula.recipes.llm.packing import (
    PACKED_KEYS,
    is_packed,
    pack_batch,
    packed_inputs,
    unpack_token_losses,
)
from torch import Tensor
from torch.nn import functional as F
from torchmetrics import Metric
from typing_extensions import override

from lightning_curricula import (
    CurriculumSampler,
    FrozenReference,
    ImportanceSampling,
    InfoBatch,
    NoiseAware,
    OnlineBatchSelection,
    Policy,
    ReferenceLosses,
    planned_optimizer_steps,
    weighted_token_mean,
)
from lightning_curricula.step.reference import vocabulary_size
from lightning_curricula.step.selection import TOKEN_METHODS, excess_loss, reducible_loss
from lightning_curricula.tracking.signals import instruction_following_difficulty

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CausalLMFineTuner",
    "TokenThroughput",
    "kept_rows",
    "loss_tokens_per_sequence",
    "reweights",
    "sequence_losses",
    "token_losses",
]

log = logging.getLogger(__name__)

#: Values per frozen tensor in a LoRA checkpoint's fingerprint of the base it leaves out (a strided sample).
FINGERPRINT_VALUES = 64


def token_losses(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token losses of next-token prediction and the mask of tokens that carry one.

    Position ``t`` predicts token ``t + 1``: the logits are shifted left and the labels right, and
    ``cross_entropy(reduction="none")`` (in float32) gives a ``(B, T - 1)`` table, 0 where the label
    is ``IGNORE_INDEX``.

    Example:
        >>> losses, mask = token_losses(torch.zeros(1, 3, 4), torch.tensor([[-100, 2, 3]]))
        >>> losses, mask
        (tensor([[1.3863, 1.3863]]), tensor([[True, True]]))
    """
    shifted_labels = labels[:, 1:]
    losses = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), shifted_labels, reduction="none", ignore_index=IGNORE_INDEX
    )
    return losses, shifted_labels != IGNORE_INDEX


def sequence_losses(losses: Tensor, mask: Tensor) -> Tensor:
    """Mean loss over each sequence's masked tokens: ``(B, T) -> (B,)``; NaN for a sequence without any.

    Example:
        >>> sequence_losses(torch.tensor([[1.0, 3.0], [2.0, 9.0]]), torch.tensor([[1, 1], [1, 0]]))
        tensor([2., 2.])
    """
    mask = mask.to(losses.dtype)
    return (losses * mask).sum(1) / mask.sum(1)


def model_token_losses(model: Any, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """``model``'s ``(B, T - 1)`` token losses and loss mask of a batch: from its packed rows when it has them.

    A packed batch (`pack_batch`) is forwarded as its packed rows, and the losses are gathered back
    into the padded batch's table (`unpack_token_losses`), so nothing downstream knows it was packed.
    """
    if is_packed(batch):
        logits = model(**packed_inputs(batch)).logits
        return unpack_token_losses(token_losses(logits, batch["packed_labels"])[0], batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return token_losses(logits, batch["labels"])


def reweights(policy: Policy | None) -> bool:
    """Whether ``policy`` gives visits weights other than 1 (InfoBatch, importance sampling, or those wrapped).

    Example:
        >>> reweights(InfoBatch(0.5)), reweights(NoiseAware(ImportanceSampling(0.5))), reweights(None)
        (True, True, False)
    """
    inner = policy.policy if isinstance(policy, NoiseAware) else policy
    return isinstance(inner, InfoBatch | ImportanceSampling)


def loss_tokens_per_sequence(labels: Sequence[Sequence[int]]) -> float:
    """The mean number of tokens that carry a loss per sequence: labels after the first that are not ignored.

    Example:
        >>> loss_tokens_per_sequence([[-100, 5, 6], [-100, -100, 7, 8, 9]])
        2.5
    """
    if not labels:
        raise ValueError("loss_tokens_per_sequence needs at least one sequence.")
    return sum(sum(label != IGNORE_INDEX for label in row[1:]) for row in labels) / len(labels)


#: The ``(B, T)`` tensors of a training batch: `kept_rows` cuts the padding columns no kept row needs.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels")


def kept_rows(batch: Mapping[str, Any], positions: Tensor) -> dict[str, Any]:
    """The rows ``positions`` of a `CausalLMCollator` batch, without the padding columns none of them needs.

    Every per-row value is indexed (tensors by ``positions``, lists item by item); ``input_ids``,
    ``attention_mask`` and ``labels`` then end at the last column where a kept row has a token. The
    collator pads on the right to the longest row, so the result is the batch `CausalLMCollator` makes
    of the kept rows alone: what a loader that selects before loading collates. A packed batch's kept
    rows are packed anew (`pack_batch`, the same capacity).

    Example:
        >>> batch = {"input_ids": torch.tensor([[5, 6, 7], [5, 8, 0]]), "index": torch.tensor([3, 4]),
        ...          "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        ...          "labels": torch.tensor([[-100, 6, 7], [-100, 8, -100]])}
        >>> part = kept_rows(batch, torch.tensor([1]))
        >>> part["input_ids"].tolist(), part["labels"].tolist(), part["index"].tolist()
        ([[5, 8]], [[-100, 8]], [4])
    """
    chosen = positions.tolist()
    part: dict[str, Any] = {
        key: value[positions.to(value.device)] if isinstance(value, Tensor) else [value[i] for i in chosen]
        for key, value in batch.items()
        if key not in PACKED_KEYS  # packed rows are not the batch's rows: the kept rows are packed anew
    }
    mask: Tensor = part["attention_mask"]
    used = mask.bool().any(0).nonzero()
    length = int(used[-1]) + 1 if used.numel() else 0
    for key in SEQUENCE_KEYS:
        if key in part:
            columns: Tensor = part[key]
            part[key] = columns[:, :length]
    if is_packed(batch):
        device = part["input_ids"].device
        packed = pack_batch(part, batch["pack_capacity"])
        part.update({key: value.to(device) if isinstance(value, Tensor) else value for key, value in packed.items()})
    return part


class TokenThroughput(Metric):
    """Loss tokens trained on per second of training-step wall time: ``tokens / seconds``, over ranks too.

    ``update(tokens, nanoseconds)`` adds one step. `compute` divides the tokens, summed over ranks, by the
    longest rank's summed step time (ranks step in lockstep, so the slowest sets the pace). Both states
    are int64 (tokens, and ``time.perf_counter_ns`` durations), so a module cast to ``bfloat16`` does not
    round them. ``full_state_update``: a step's own value (``forward``) needs the epoch's state merged by
    sum for the tokens but by max only across ranks for the time.

    Example:
        >>> throughput = TokenThroughput()
        >>> float(throughput(torch.tensor(300), 2_000_000_000)), float(throughput(torch.tensor(100), 2_000_000_000))
        (150.0, 50.0)
        >>> float(throughput.compute())
        100.0
    """

    full_state_update = True
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nanoseconds", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="max")

    tokens: Tensor
    nanoseconds: Tensor

    def update(self, tokens: Tensor, nanoseconds: int) -> None:
        """Add a step that trained on ``tokens`` loss tokens in ``nanoseconds``."""
        self.tokens += tokens.to(device=self.tokens.device, dtype=torch.int64)
        self.nanoseconds += int(nanoseconds)

    def compute(self) -> Tensor:
        """Tokens per second; 0 before any time was measured."""
        seconds = self.nanoseconds.double() / 1e9
        return torch.where(seconds > 0, self.tokens / seconds.clamp_min(1e-9), 0.0)


class CausalLMFineTuner(pl.LightningModule):
    """Fine-tune a causal LM on instruction data, the loss on response tokens only.

    Per batch (from `CausalLMCollator`, with ``index`` and ``weight`` from `WithIndex` and the
    sampler): token losses by ``cross_entropy(reduction="none")`` on shifted logits and labels; the
    per-sequence loss (the mean over its response tokens) is returned as ``losses`` for
    `TrainingDynamics`; the optimised loss is ``weighted_token_mean(token_losses, mask, weight)``, over
    the fixed ``token_count`` of `reweighting_token_count` when the policy `reweights`.

    - **LoRA**: ``lora_rank > 0`` trains low-rank adapters (``peft``) instead of all weights. Its
      checkpoints hold the trainable parameters only (see the Note).
    - **Hugging Face out**: when fitting ends, rank 0 writes the model as Hugging Face folders
      (`export_hugging_face`: ``hf_model/`` for full fine-tuning; with LoRA ``hf_adapter/``, and the merged
      model in ``hf_model/`` with ``merge_lora``) under ``export_dir``, else the run's log directory
      (``trainer.log_dir``, where the logger writes); a run without a logger and without ``export_dir``
      exports nothing. ``lightning-curricula export CHECKPOINT DIR`` writes the same from a checkpoint.
    - **Schedule**: AdamW with linear warm-up and cosine decay to ``min_lr_ratio``
      (``transformers.get_cosine_with_min_lr_schedule_with_warmup``) over the run's optimizer steps,
      `planned_optimizer_steps` (exact for a pruning or paced plan), else (a policy that sizes its
      epochs from the scores) Lightning's ``estimated_stepping_batches``, with a warning.
    - **Validation**, per held-out split (the data module's ``val_split_names``, such as ``easy`` and
      ``hard``): ``val/<split>/loss`` (mean per-sequence response loss) and, with
      ``max_new_tokens > 0``, ``val/<split>/accuracy`` (greedy generation graded by ``scorer``: an
      answer counts when it scores 1) and ``val/<split>/score`` (the mean score).
    - **Test**, after training (``trainer.test``), the same metrics under ``test/<split>/...`` on the data
      module's test splits (``test_split_names``), disjoint from the validation ones.
    - **IFD** (Li et al. 2024, "From Quantity to Quality"): `compute_example_scores` runs the model
      in eval mode over the training set twice, with and without the instruction, and keeps per example
      id ``initial_loss`` (response loss given the prompt), ``response_loss`` (given only a start
      token), ``ifd`` (their ratio, `instruction_following_difficulty`) and ``ifd_below_1`` (NaN at or
      above 1, the rows Li et al. set aside), by ``score_model`` when given. With
      ``fit_start_scores=True`` it runs once when fitting starts (in ``configure_optimizers``), before
      the first plan (so a policy may rank by these scores); the values are cached per id, saved in
      checkpoints, logged (mean and histogram) and exported by `DifficultyReport`.
    - **Selection inside the step**, with an `lightning_curricula.OnlineBatchSelection` on the Trainer:
      with ``token_reference``, Rho-1's token selection (below); without it, **sequence selection**. Each
      step scores its batch with a forward in eval mode and without gradients (each sequence's mean
      response-token loss, `sequence_losses`; with ``irreducible_losses``, RHO-LOSS's `reducible_loss`,
      that loss minus the example's irreducible loss), the callback keeps its share of the sequences (its
      ``method``: ``top_k``, Selective Backprop's ``percentile`` rule with ``beta``, or the ``random``
      twin), and the forward and backward run on the kept rows only (`kept_rows`: the padding no kept row
      needs is cut). The loss is ``weighted_token_mean`` over the kept rows with the plan weight times
      the selection weight; its fixed ``token_count`` (a reweighting policy, or the callback's
      ``unbiased=True``) is ``keep`` times the full batch's. With the callback's ``rescore_every != 1``
      (Stale-SB) only the scoring epochs run the scoring forward; the others select by the remembered
      scores, which the kept rows' training losses refresh, and a train loader from
      `lightning_curricula.curriculum_dataloader` (the data module's) then selects before loading: the
      rows it drops are never fetched or collated. The scoring forward is charged in the callback's
      ``scoring_forwards`` (read by ``compare``) and in ``train/scoring_tokens``.
    - **Throughput**: ``train/tokens_per_second`` (`TokenThroughput`; ``_step`` and ``_epoch``, by
      Lightning's naming), the loss tokens trained on (the kept rows' response tokens; Rho-1's kept tokens)
      per second of training-step wall time, timed with ``time.perf_counter_ns`` from the module's
      ``on_train_batch_start`` to its ``on_train_batch_end`` (the scoring forward, backward, optimizer
      step and the callbacks' batch-end hooks included; on CUDA the end waits for the device).

    Args:
        model: `SMOLLM2` (the embedded default), a model name, folder or ``.gguf`` file, or a model.
        tokenizer: the tokenizer or its name; by default the one of ``model`` (required for a model object).
        lr: peak learning rate.
        weight_decay: AdamW weight decay on matrices (not on norms and biases).
        warmup_ratio: share of the steps spent warming up.
        min_lr_ratio: the final learning rate as a share of ``lr``.
        lora_rank: LoRA rank; ``0`` fine-tunes every weight.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA branch.
        lora_target_modules: modules that get adapters (``"all-linear"``: every linear layer but the head).
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30% slower).
        max_new_tokens: greedy generation length for accuracy; ``0`` skips generation.
        scorer: grades a generated answer (see `make_scorer`); by default the data module's
            ``scorer``, else `normalized_match`.
        fit_start_scores: compute `compute_example_scores` when fitting starts (`score_training_set`).
        score_batch_size: batch size of those passes.
        score_model: the model those passes run, instead of the one being trained: a model name or folder (any
            `load_causal_lm` takes) with the same vocabulary, such as the ``hf_model/`` of a brief fine-tune
            (IFD as Li et al. 2024 compute it, with a "pre-experienced" model; with LoRA export it with
            ``merge_lora``). Loaded when the scores are computed and dropped after, so it is in no checkpoint.
        dtype: parameter dtype when loading by name.
        token_reference: Rho-1's reference for selection inside the step (with an
            `lightning_curricula.OnlineBatchSelection` on the Trainer, which then keeps the share of
            each batch's response tokens with the highest excess loss, the trained model's token loss
            minus the reference's): ``"initial"``, the model before fine-tuning (with LoRA the base
            model with its adapters off, at no extra memory; otherwise a frozen copy), or a model name,
            folder or ``.gguf`` file with the same vocabulary (checked at construction against its
            tokenizer when it has one: the same tokens with the same ids). ``None``: no token selection.
        irreducible_losses: RHO-LOSS: a file saved by `lightning_curricula.ReferenceLosses.save` with one
            irreducible loss per training example id (a holdout model's per-sequence losses, such as
            ``python -m lightning_curricula.recipes.llm.holdout`` writes); sequence selection then ranks by
            the reducible loss. Read at setup (a missing file fails there), its size checked against the
            training set; the losses are kept in checkpoints (a resumed run ranks by the checkpoint's).
            Needs an ``OnlineBatchSelection`` and no ``token_reference``.
        merge_lora: with LoRA, also export the model with the adapters merged into its weights (``hf_model/``).
        hf_export: export the Hugging Face folders when fitting ends.
        export_dir: where they go; by default the run's log directory (and nowhere without a logger).

    Note:
        **DDP**: each rank scores its share of the ids and one all-reduce joins them, so every rank
        holds the same scores; validation metrics are reduced across ranks. **Resume**: the example
        scores and the token count are saved in the checkpoint; the schedule's step count is
        recomputed from the same plan, and its position is in the scheduler's state. With LoRA, the
        checkpoint leaves out every frozen parameter (the base model, and a reference loaded by name): the
        module builds them again in ``__init__`` from ``model``, and loading checks them against the
        fingerprint the checkpoint keeps (each tensor's shape and a strided sample of
        `FINGERPRINT_VALUES` values), so a checkpoint resumes or loads only on the base it was trained on.
    """

    def __init__(
        self,
        model: str | PreTrainedModel = SMOLLM2,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        *,
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.1,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        lora_target_modules: str | list[str] = "all-linear",
        gradient_checkpointing: bool = False,
        max_new_tokens: int = 16,
        scorer: Scorer | None = None,
        fit_start_scores: bool = False,
        score_batch_size: int = 16,
        score_model: str | None = None,
        dtype: str = "float32",
        token_reference: str | None = None,
        irreducible_losses: str | None = None,
        merge_lora: bool = False,
        hf_export: bool = True,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0 or not 0.0 <= warmup_ratio < 1.0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(
                f"Need lr > 0, warmup_ratio in [0, 1) and min_lr_ratio in [0, 1]; "
                f"got {lr}, {warmup_ratio}, {min_lr_ratio}."
            )
        if lora_rank < 0 or max_new_tokens < 0 or score_batch_size < 1:
            raise ValueError(
                f"lora_rank and max_new_tokens must be >= 0 and score_batch_size >= 1, got "
                f"{lora_rank}, {max_new_tokens} and {score_batch_size}."
            )
        if merge_lora and lora_rank == 0:
            raise ValueError(f"merge_lora=True needs lora_rank > 0 (adapters to merge), got lora_rank={lora_rank}.")
        if not isinstance(model, str) and tokenizer is None:
            raise ValueError("A model object needs its tokenizer: pass tokenizer=.")
        if irreducible_losses is not None and token_reference is not None:
            raise ValueError(
                f"irreducible_losses={irreducible_losses!r} ranks sequences (RHO-LOSS) and token_reference="
                f"{token_reference!r} ranks tokens (Rho-1): an OnlineBatchSelection does one of them; set one."
            )
        objects = [
            name for name, value in (("model", model), ("tokenizer", tokenizer)) if not isinstance(value, str | None)
        ]
        self.save_hyperparameters(ignore=[*objects, "scorer"])
        if isinstance(tokenizer, str) or tokenizer is None:
            tokenizer = load_tokenizer(tokenizer if isinstance(tokenizer, str) else str(model))
        self.tokenizer = tokenizer
        self.model = load_causal_lm(model, dtype=dtype) if isinstance(model, str) else model
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.config.use_cache = False
        if lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(
                task_type="CAUSAL_LM",
                r=lora_rank,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                target_modules=lora_target_modules,
            )
            self.model = get_peft_model(self.model, config)
        self.token_reference = token_reference
        self.reference: FrozenReference | None = None
        if token_reference is not None and not (token_reference == "initial" and lora_rank > 0):
            initial = token_reference == "initial"
            source = copy.deepcopy(self.model) if initial else load_causal_lm(token_reference, dtype=dtype)
            tokenizers = {} if initial else _reference_tokenizers(self.tokenizer, token_reference)
            self.reference = FrozenReference(source, vocab_size=vocabulary_size(self.model), **tokenizers)
        self.selection: OnlineBatchSelection | None = None
        self.irreducible_path = irreducible_losses
        #: RHO-LOSS's irreducible losses by example id: read from ``irreducible_losses`` at setup, or a checkpoint.
        self.irreducible: ReferenceLosses | None = None
        self.throughput = TokenThroughput()
        self._step_started_ns: int | None = None
        # from_pretrained returns the model in eval mode, and Lightning keeps each submodule's mode when fitting
        # starts: train mode, or dropout (LoRA's too) would be silently off during training.
        self.model.train()
        self.lora_rank = lora_rank
        self.merge_lora = merge_lora
        self.hf_export = hf_export
        self.export_dir = export_dir
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.min_lr_ratio = min_lr_ratio
        #: The schedule's optimizer steps, set by `configure_optimizers`.
        self.total_steps: int | None = None
        self.max_new_tokens = max_new_tokens
        self.scorer = scorer
        self.fit_start_scores = fit_start_scores
        self.score_batch_size = score_batch_size
        self.score_model = score_model
        self._dtype = dtype
        self.example_scores: dict[str, Tensor] = {}
        self.tokens_seen = 0
        #: Tokens (prompt and response, all ranks) the scoring forwards of selection inside the step ran on.
        self.scoring_tokens_seen = 0
        self._epoch_scoring_tokens: Tensor | None = None  # this rank's, summed on the device until the epoch ends
        #: The fixed denominator of `weighted_token_mean` when the policy reweights (set when training starts).
        self.token_count: float | None = None

    # ------------------------------------------------------------------------------------ forward

    def token_losses(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """``(B, T - 1)`` token losses and loss mask of a batch (see `token_losses`), packed or padded."""
        return model_token_losses(self.model, batch)

    def reference_token_losses(self, batch: Mapping[str, Any]) -> Tensor:
        """``(B, T - 1)`` token losses of Rho-1's reference (no gradients, eval mode)."""
        if self.reference is not None:
            return model_token_losses(self.reference, batch)[0]
        # "initial" with LoRA: the base model is the model with its adapters off
        training = self.model.training
        self.model.eval()
        with torch.no_grad(), self.model.disable_adapter():  # type: ignore[operator]
            losses = model_token_losses(self.model, batch)[0]
        self.model.train(training)
        return losses

    @override
    def setup(self, stage: str) -> None:
        found = [c for c in self.trainer.callbacks if isinstance(c, OnlineBatchSelection)]  # type: ignore[attr-defined]
        if len(found) > 1:
            raise ValueError(f"The LLM recipe takes one OnlineBatchSelection, the Trainer has {len(found)}.")
        self.selection = found[0] if found else None
        if self.selection is None and self.token_reference is not None:
            raise ValueError(
                "Token selection (Rho-1) needs both an OnlineBatchSelection in trainer.callbacks and "
                f"model.token_reference; got {len(found)} callback(s) and token_reference={self.token_reference!r} "
                "(see recipes/llm/configs/rho1.yaml)."
            )
        if self.selection is None and self.irreducible_path is not None:
            raise ValueError(
                f"irreducible_losses={self.irreducible_path!r} ranks the sequences of each batch for an "
                "OnlineBatchSelection (RHO-LOSS), but the Trainer has none: add one to trainer.callbacks (see "
                "recipes/llm/configs/rho_loss.yaml)."
            )
        if self.selection is not None and self.token_reference is not None:
            if self.selection.method not in TOKEN_METHODS:
                raise ValueError(
                    f"Token selection (Rho-1, token_reference={self.token_reference!r}) takes method in "
                    f"{TOKEN_METHODS}; the OnlineBatchSelection has method={self.selection.method!r}. Without "
                    "token_reference it selects sequences, where every method works."
                )
            if self.selection.remembers_scores:
                raise ValueError(
                    f"rescore_every={self.selection.rescore_every} remembers one score per sequence between scoring "
                    "epochs (Stale-SB), but token selection (Rho-1) scores every token in every step: use "
                    "rescore_every=1, or drop token_reference to select sequences."
                )
        if stage == "fit" and self.irreducible_path is not None and self.irreducible is None:
            path = Path(self.irreducible_path).expanduser()
            if not path.is_file():  # checked here, not in __init__: a config names the file before it is written
                raise ValueError(
                    f"irreducible_losses={self.irreducible_path!r} is not a file: write it first with python -m "
                    "lightning_curricula.recipes.llm.holdout (the run's options), or ReferenceLosses.save."
                )
            self.irreducible = ReferenceLosses.load(path)
        if stage == "fit" and self.irreducible is not None:
            self._check_irreducible_size(required=False)

    @property
    def selects_sequences(self) -> bool:
        """Whether the steps select sequences (Selective Backprop, Stale-SB, RHO-LOSS, the random twin): after setup."""
        return self.selection is not None and self.token_reference is None

    def _check_irreducible_size(self, *, required: bool) -> None:
        """The irreducible losses must have one loss per training example (the data module's, or the loader's)."""
        assert self.irreducible is not None
        dataset = getattr(getattr(self.trainer, "datamodule", None), "train_dataset", None)
        if dataset is None and required:
            dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__"):
            self.irreducible.check_size(len(dataset))
        elif required:
            raise ValueError(
                "irreducible_losses needs a training set of known size to be checked against (the data module's "
                "train_dataset, or a train DataLoader over a sized dataset); got neither."
            )

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        if self.selection is not None and self.token_reference is None:
            return self._sequence_selection_step(batch, self.selection)
        losses, mask = self.token_losses(batch)
        trained, token_count = mask, self.token_count
        if self.selection is not None:  # Rho-1: the loss on the tokens with the highest excess loss only
            scores = excess_loss(losses.detach(), self.reference_token_losses(batch))
            trained = self.selection.select_tokens(scores, mask)
            token_count = None if token_count is None else token_count * self.selection.keep
            self._charge_scoring(batch)
        loss = weighted_token_mean(losses, trained, batch.get("weight"), token_count=token_count)
        self._log_step(loss, batch)
        return {"loss": loss, "losses": sequence_losses(losses.detach(), mask), "loss_tokens": trained.sum()}

    def _sequence_selection_step(self, batch: dict[str, Any], selection: OnlineBatchSelection) -> dict[str, Tensor]:
        """Score the batch's sequences (or recall their scores), keep the callback's share, train on those rows."""
        index = batch["index"]
        kept = selection.select_remembered(index)
        if kept is None:  # a scoring epoch, or a sequence without a remembered score
            kept = selection.select(self.scoring_forward(batch), index=index)
            self._charge_scoring(batch)
        if kept.positions.numel() == 0:
            return self._nothing_kept_step(batch)
        part = dict(batch) if selection.preselected else kept_rows(batch, kept.positions)  # preselected: all kept
        weights = kept.weights.to(self.device)
        if "weight" in part:
            weights = weights * part["weight"].to(weights.dtype)
        losses, mask = self.token_losses(part)
        per_sequence = sequence_losses(losses.detach(), mask)
        if selection.remembers_scores:  # the kept rows' training losses: fresh scores for the epochs between
            selection.remember(part["index"], self.score(per_sequence, part["index"]))
        token_count = None if self.token_count is None else self.token_count * selection.keep
        loss = weighted_token_mean(losses, mask, weights, token_count=token_count)
        self._log_step(loss, part)
        return {
            "loss": loss,
            "losses": per_sequence,
            "index": part["index"],
            "weight": weights,
            "loss_tokens": mask.sum(),
        }

    def _nothing_kept_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Every score was non-finite: a step of weight 0 on one row (each DDP rank must run a backward), untracked."""
        part = kept_rows(batch, torch.zeros(1, dtype=torch.long))
        losses, mask = self.token_losses(part)
        loss = weighted_token_mean(losses, mask, torch.zeros(1, device=self.device))
        self.log("train/loss", loss, prog_bar=True, batch_size=1)
        nothing = batch["index"][:0]
        return {
            "loss": loss,
            "losses": torch.zeros(0, device=self.device),
            "index": nothing,
            "weight": torch.zeros(0, device=self.device),
            "loss_tokens": mask.sum() * 0,
        }

    @torch.no_grad()
    def scoring_forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The batch's sequence scores from a forward in eval mode without gradients: `score` of `sequence_losses`."""
        training = self.model.training
        self.model.eval()
        try:
            losses = sequence_losses(*self.token_losses(batch))
        finally:
            self.model.train(training)
        return self.score(losses, batch["index"])

    def score(self, losses: Tensor, index: Tensor) -> Tensor:
        """What sequence selection ranks by: the loss, or with ``irreducible_losses`` the reducible loss."""
        return losses if self.irreducible is None else reducible_loss(losses, self.irreducible.lookup(index))

    def _charge_scoring(self, batch: Mapping[str, Tensor]) -> None:
        """Count the tokens a scoring (or Rho-1 reference) forward ran on, on the device until the epoch ends."""
        tokens = batch["attention_mask"].sum()
        before = self._epoch_scoring_tokens
        self._epoch_scoring_tokens = tokens if before is None else before + tokens

    def _log_step(self, loss: Tensor, batch: Mapping[str, Tensor]) -> None:
        size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        # The epoch's token count over all ranks: policies plan examples, so compare them by tokens too.
        tokens = batch["attention_mask"].sum().float()
        self.log("train/tokens", tokens, on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True, batch_size=size)

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started_ns = time.perf_counter_ns()

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._step_started_ns is None or not isinstance(outputs, Mapping) or "loss_tokens" not in outputs:
            return
        if self.device.type == "cuda":  # the kernels queued by the step, backward and optimizer step
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter_ns() - self._step_started_ns
        self._step_started_ns = None
        self.throughput(outputs["loss_tokens"], elapsed)
        self.log("train/tokens_per_second", self.throughput, on_step=True, on_epoch=True, batch_size=1)

    @override
    def on_train_epoch_end(self) -> None:
        epoch_tokens = self.trainer.callback_metrics.get("train/tokens")
        self.tokens_seen += int(epoch_tokens) if epoch_tokens is not None else 0
        self.log("train/tokens_seen", float(self.tokens_seen))
        if self.selection is not None:  # one collective: the scoring forwards' tokens over all ranks
            scoring = self._epoch_scoring_tokens
            mine = torch.zeros((), dtype=torch.int64, device=self.device) if scoring is None else scoring.long()
            epoch_scoring = int(self.trainer.strategy.reduce(mine, reduce_op="sum"))
            self._epoch_scoring_tokens = None
            self.scoring_tokens_seen += epoch_scoring
            self.log("train/scoring_tokens", float(epoch_scoring))
        self.log("train/scoring_tokens_seen", float(self.scoring_tokens_seen))  # 0 without selection: a cost column

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val", self._split_name(dataloader_idx, "val_split_names"))

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test", self._split_name(dataloader_idx, "test_split_names"))

    def _evaluate(self, batch: dict[str, Any], prefix: str, split: str) -> None:
        """Log ``<prefix>/<split>/loss`` and, generating answers, ``accuracy`` and ``score``."""
        size = batch["input_ids"].shape[0]
        losses, mask = self.token_losses(batch)
        per_sequence = sequence_losses(losses, mask)
        self.log(
            f"{prefix}/{split}/loss", per_sequence.mean(), batch_size=size, add_dataloader_idx=False, sync_dist=True
        )
        if self.max_new_tokens == 0 or "prompt_input_ids" not in batch:  # no prompts: text rows have no answers
            return
        predictions = self.generate(batch["prompt_input_ids"], batch["prompt_attention_mask"])
        scorer = self._scorer()
        scores = torch.tensor(
            [
                scorer(prediction, {"reference": reference, "metadata": metadata})
                for prediction, reference, metadata in zip(
                    predictions, batch["reference"], batch["metadata"], strict=True
                )
            ],
            device=self.device,
        )
        self.log(
            f"{prefix}/{split}/accuracy",
            (scores >= 1.0).float().mean(),
            batch_size=size,
            add_dataloader_idx=False,
            sync_dist=True,
        )
        self.log(f"{prefix}/{split}/score", scores.mean(), batch_size=size, add_dataloader_idx=False, sync_dist=True)

    @torch.no_grad()
    def generate(self, prompt_ids: Tensor, attention_mask: Tensor) -> list[str]:
        """Greedy answers to left-padded prompts, decoded without special tokens and stripped."""
        from transformers import GenerationConfig

        eos = self.tokenizer.eos_token_id
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            use_cache=True,  # also when training turned the cache off (gradient checkpointing)
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        output = self.model.generate(input_ids=prompt_ids, attention_mask=attention_mask, generation_config=config)
        texts = self.tokenizer.batch_decode(output[:, prompt_ids.shape[1] :], skip_special_tokens=True)
        return [text.strip() for text in texts]

    def _scorer(self) -> Scorer:
        if self.scorer is None:
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            self.scorer = getattr(datamodule, "scorer", None) or make_scorer()
        return self.scorer

    def _split_name(self, dataloader_idx: int, names_attribute: str) -> str:
        datamodule = getattr(self.trainer, "datamodule", None)
        names: Sequence[str] = getattr(datamodule, names_attribute, ()) or ()
        return names[dataloader_idx] if dataloader_idx < len(names) else f"split{dataloader_idx}"

    # ------------------------------------------------------------------------------------ IFD

    @torch.no_grad()
    def compute_example_scores(self, dataset: Any, ids: Sequence[int] | None = None) -> dict[str, Tensor]:
        """Pre-training difficulty per example id: ``initial_loss``, ``response_loss``, ``ifd`` and ``ifd_below_1``.

        Two forward passes in eval mode per batch: the training input (prompt and response), and
        the response alone after the tokenizer's BOS token (its EOS when it has none; see
        `response_only`), both averaged over the same response tokens. Only ids not scored yet are
        computed (all of ``ids``, by default every id of ``dataset``); under DDP each rank scores a
        share and one all-reduce joins them.

        Args:
            dataset: the `prepare_dataset` rows (the training set; ids are its positions).
            ids: which ids to score.

        Returns:
            `example_scores`: name -> ``(N,)`` tensor, NaN for ids never scored.
        """
        size = len(dataset)
        if self.example_scores and next(iter(self.example_scores.values())).numel() != size:
            raise ValueError(
                f"The cached example scores cover {next(iter(self.example_scores.values())).numel()} examples, "
                f"the dataset has {size}."
            )
        for name in ("initial_loss", "response_loss", "ifd", "ifd_below_1"):  # setdefault: older checkpoints lack some
            self.example_scores.setdefault(name, torch.full((size,), math.nan))
        wanted = torch.arange(size) if ids is None else torch.as_tensor(list(ids), dtype=torch.long)
        todo = wanted[self.example_scores["ifd"][wanted].isnan()]
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self._trainer is not None else (1, 0)
        if todo.numel() == 0:
            return self.example_scores
        collate = CausalLMCollator(self.tokenizer)
        model = self._scoring_model()
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        values = torch.zeros(2, size, device=self.device)
        was_training = self.model.training
        model.eval()
        mine = todo[rank::world].tolist()
        for first in range(0, len(mine), self.score_batch_size):
            chunk = mine[first : first + self.score_batch_size]
            rows = dataset.__getitems__(chunk) if hasattr(dataset, "__getitems__") else [dataset[i] for i in chunk]
            batch = {k: v.to(self.device) for k, v in collate(rows).items()}
            conditioned = sequence_losses(*model_token_losses(model, batch))
            alone = {
                k: v.to(self.device)
                for k, v in response_only(batch, int(start), int(self.tokenizer.pad_token_id)).items()
            }
            unconditioned = sequence_losses(*model_token_losses(model, alone))
            index = torch.tensor(chunk, device=self.device)
            values[0, index] = conditioned
            values[1, index] = unconditioned
        self.model.train(was_training)
        if world > 1:
            values = self.trainer.strategy.reduce(values, reduce_op="sum")
        values = values.cpu()
        self.example_scores["initial_loss"][todo] = values[0, todo]
        self.example_scores["response_loss"][todo] = values[1, todo]
        ifd = instruction_following_difficulty(values[0, todo], values[1, todo])
        self.example_scores["ifd"][todo] = ifd
        # Li et al. set aside IFD >= 1 (the prompt does not help): NaN ranks last in every order
        self.example_scores["ifd_below_1"][todo] = ifd.where(ifd < 1, math.nan)
        self._log_example_scores()
        return self.example_scores

    def _scoring_model(self) -> torch.nn.Module:
        """The model `compute_example_scores` runs: the trained one, or ``score_model`` checked and on the device."""
        if self.score_model is None:
            return self.model
        tokenizers = _reference_tokenizers(self.tokenizer, self.score_model)
        loaded = load_causal_lm(self.score_model, dtype=self._dtype)
        return FrozenReference(loaded, vocab_size=vocabulary_size(self.model), **tokenizers).to(self.device)

    def _log_example_scores(self) -> None:
        if self._trainer is None:
            return
        metrics: dict[str, float] = {}
        for name, values in self.example_scores.items():
            finite = values[values.isfinite()]
            metrics[f"example_scores/{name}_mean"] = float(finite.mean()) if finite.numel() else math.nan
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=self.trainer.global_step)
            if isinstance(logger, TensorBoardLogger):
                for name, values in self.example_scores.items():
                    finite = values[values.isfinite()]
                    if finite.numel():
                        logger.experiment.add_histogram(f"example_scores/{name}", finite, self.trainer.global_step)

    def score_training_set(self) -> None:
        """With ``fit_start_scores``, `compute_example_scores` over the training set (the ids not scored yet).

        Called from `configure_optimizers`, the first hook after the model is on its device and before the
        train loader is built there to size the schedule: the first plan may rank by these scores.
        """
        if not self.fit_start_scores:
            return
        dataset = getattr(self.trainer.datamodule, "train_dataset", None)
        if dataset is None:
            raise ValueError("fit_start_scores=True needs a data module with a train_dataset (InstructionDataModule).")
        self.compute_example_scores(dataset)

    # ------------------------------------------------------------------------------------ optimisation

    @override
    def configure_optimizers(self) -> Any:
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        trainable = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": self.weight_decay},
            {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.lr)
        self.score_training_set()  # before planned_steps builds the train loader, whose first plan may need them
        self.total_steps = self.planned_steps()
        warmup = max(1, round(self.warmup_ratio * self.total_steps))
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps, min_lr_rate=self.min_lr_ratio
        )
        log.info("LR schedule: %d optimizer steps (%d warm-up).", self.total_steps, warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @override
    def on_train_start(self) -> None:
        if self.irreducible is not None:  # restored from a checkpoint too: the training set must be the one it scores
            self._check_irreducible_size(required=True)
        self.token_count = self.reweighting_token_count()

    def reweighting_token_count(self) -> float | None:
        """``batch_size * loss_tokens_per_sequence(train labels)`` when the weights are not all 1, else ``None``.

        The weights are not all 1 when the sampler's policy `reweights`, or when sequence selection draws
        inclusion-probability weights (an ``OnlineBatchSelection`` with ``unbiased=True``). The batch's own
        token count would bias the loss of a reweighted plan (see `weighted_token_mean`). ``batch_size`` is
        the loader's batches before selection: a loader that selects before loading batches fewer rows.
        """
        loader = self.trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        policy = sampler.policy if isinstance(sampler, CurriculumSampler) else None
        unbiased = self.selects_sequences and self.selection is not None and self.selection.unbiased
        if not reweights(policy) and not unbiased:
            return None
        why = f"{type(policy).__name__} reweights" if reweights(policy) else "OnlineBatchSelection(unbiased=True)"
        dataset = getattr(getattr(self.trainer, "datamodule", None), "train_dataset", None)
        preselection = getattr(sampler, "batch_preselection", None)
        batch_size = getattr(preselection, "batch_size", None) or getattr(loader, "batch_size", None)
        if dataset is None or not batch_size:
            raise ValueError(
                f"{why}, and an unbiased token loss needs the data module's train_dataset (with labels) and a "
                "DataLoader with a batch_size."
            )
        return int(batch_size) * loss_tokens_per_sequence(dataset["labels"])

    def planned_steps(self) -> int:
        """Optimizer steps of the whole run: `planned_optimizer_steps`, else Lightning's estimate (with a warning)."""
        try:
            return planned_optimizer_steps(self.trainer)
        except ValueError as error:
            rank_zero_warn(f"{error} The LR schedule uses Lightning's estimate instead.")
        return max(int(self.trainer.estimated_stepping_batches), 1)

    # ------------------------------------------------------------------------------------ Hugging Face out

    @override
    def on_fit_end(self) -> None:
        if not self.hf_export:
            return
        directory = self.export_dir
        if directory is None and self.trainer.loggers:
            directory = self.trainer.log_dir  # on every rank: it broadcasts rank 0's
        if directory is None:
            rank_zero_info("No Hugging Face export: the run has no log directory; set model.export_dir for one.")
            return
        if self.trainer.is_global_zero:
            written = export_hugging_face(self, directory)
            rank_zero_info(f"Wrote the Hugging Face folders {', '.join(str(path) for path in written.values())}.")
        self.trainer.strategy.barrier("hf_export")  # every rank returns from fit with the folders written

    # ------------------------------------------------------------------------------------ checkpoint

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["example_scores"] = {name: values.clone() for name, values in self.example_scores.items()}
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["scoring_tokens_seen"] = self.scoring_tokens_seen
        if self.irreducible is not None:  # a resumed RHO-LOSS run ranks by these, whatever the file holds by then
            checkpoint["irreducible_losses"] = self.irreducible.losses.clone()
        if self.lora_rank > 0:  # the adapters only: __init__ builds the frozen rest again
            frozen = self._frozen_parameters()
            for key in frozen:
                checkpoint["state_dict"].pop(key, None)
            checkpoint["lora_base"] = {
                "version": 1,
                "model": self._base_name(),
                "fingerprint": {
                    key: {"shape": list(tensor.shape), "values": _fingerprint(tensor)} for key, tensor in frozen.items()
                },
            }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.example_scores = {name: values.clone() for name, values in checkpoint.get("example_scores", {}).items()}
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        self.scoring_tokens_seen = int(checkpoint.get("scoring_tokens_seen", 0))
        if "irreducible_losses" in checkpoint:
            self.irreducible = ReferenceLosses(checkpoint["irreducible_losses"])
        if "lora_base" in checkpoint:
            self._restore_frozen(checkpoint["state_dict"], checkpoint["lora_base"])

    def _frozen_parameters(self) -> dict[str, Tensor]:
        """The state-dict keys and values of every frozen parameter (tied ones under each of their names)."""
        return {name: p.detach() for name, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad}

    def _base_name(self) -> str | None:
        name = self.hparams.get("model")
        return name if isinstance(name, str) else getattr(getattr(self.model, "config", None), "_name_or_path", None)

    def _restore_frozen(self, state: dict[str, Any], base: Mapping[str, Any]) -> None:
        """Put this module's frozen parameters into a LoRA checkpoint's ``state``, after checking its fingerprint."""
        trained_on = f"the checkpoint was trained on model={base.get('model')!r}, this module has {self._base_name()!r}"
        if self.lora_rank == 0:
            raise ValueError(
                "The checkpoint holds LoRA adapters without their base, and this module has lora_rank=0: build it "
                f"with the checkpoint's LoRA options ({trained_on})."
            )
        frozen, saved = self._frozen_parameters(), base["fingerprint"]
        if set(frozen) != set(saved):
            only_saved, only_here = sorted(set(saved) - set(frozen)), sorted(set(frozen) - set(saved))
            raise ValueError(
                f"The checkpoint's frozen parameters do not match this module's: {len(only_saved)} only in the "
                f"checkpoint {only_saved[:3]}, {len(only_here)} only in the module {only_here[:3]} ({trained_on})."
            )
        for key, tensor in frozen.items():
            if list(tensor.shape) != list(saved[key]["shape"]) or not _same_values(
                saved[key]["values"], _fingerprint(tensor)
            ):
                raise ValueError(
                    f"This module's base does not match the checkpoint's: {key} differs (shape "
                    f"{list(tensor.shape)}, the checkpoint's {list(saved[key]['shape'])}); {trained_on}. A LoRA "
                    "checkpoint loads on the base model it was trained on."
                )
            state[key] = tensor


def _fingerprint(tensor: Tensor) -> Tensor:
    """A strided sample of `FINGERPRINT_VALUES` values of ``tensor`` (all of them when it has fewer), on the CPU."""
    flat = tensor.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // FINGERPRINT_VALUES)][:FINGERPRINT_VALUES].cpu().clone()


def _same_values(saved: Tensor, current: Tensor) -> bool:
    """Whether two fingerprints agree, one cast to the other's dtype (a ``bf16-true`` run saves a bfloat16 base)."""
    if saved.shape != current.shape:
        return False
    return torch.equal(current.to(saved.dtype), saved) or torch.equal(saved.to(current.dtype), current)


def _reference_tokenizers(tokenizer: Any, token_reference: str) -> dict[str, Any]:
    """`FrozenReference`'s tokenizer check for a reference loaded by name: both tokenizers, or none when it has none.

    The reference's tokenizer is read as it is (`load_tokenizer` without its pad token: the check needs only the
    token-to-id mapping, and a reference without a pad or EOS token is still checked).
    """
    from transformers import AutoTokenizer

    path = Path(token_reference).expanduser()
    try:
        if token_reference in (SMOLLM2, TINY):
            reference_tokenizer = load_tokenizer(token_reference)
        elif path.suffix == ".gguf":
            reference_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        else:  # transformers raises OSError for a missing folder, ValueError for one without tokenizer files
            reference_tokenizer = AutoTokenizer.from_pretrained(token_reference)
    except (OSError, ValueError) as error:
        rank_zero_warn(
            f"token_reference={token_reference!r} has no tokenizer to check against the trained model's ({error}); "
            "only its vocabulary size is checked."
        )
        return {}
    return {"tokenizer": tokenizer, "reference_tokenizer": reference_tokenizer}

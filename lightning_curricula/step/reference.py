"""Reference models for selection inside the step: irreducible losses (RHO-LOSS) and frozen references (Rho-1).

Two ways to have a reference loss in the ``training_step``:

- `irreducible_losses` computes, once, the per-example loss of a small model trained on held-out data
  for a map-style dataset; `ReferenceLosses` keeps it by example id (the id `WithIndex` puts in the
  batch), saves and loads it, and exports it like the tracker's tables (``datasets.Dataset`` / parquet).
- `FrozenReference` wraps a model for streams, scored on the fly: always in eval mode, no gradients,
  never trained, and checked against the trained model's vocabulary for per-token references (its
  size, and given both tokenizers, `vocabulary_fingerprint`: which token each id is).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from typing_extensions import Self, override

if TYPE_CHECKING:
    import datasets

__all__ = ["FrozenReference", "ReferenceLosses", "irreducible_losses", "vocabulary_fingerprint", "vocabulary_size"]

STATE_VERSION = 1
LOSS_COLUMN = "irreducible_loss"


class ReferenceLosses:
    """One reference (irreducible) loss per example id, ``losses[i]`` for the example with id ``i``.

    Mindermann et al., "Prioritized Training on Points that are Learnable, Worth Learning, and Not Yet
    Learnt", ICML 2022: the irreducible loss is the loss of a model trained on held-out data; RHO-LOSS
    keeps the examples with the highest training loss minus it (`reducible_loss`).

    Args:
        losses: ``(N,)`` float losses by id; NaN for an id without a reference (never selected).

    Examples:
        >>> reference = ReferenceLosses(torch.tensor([0.1, 2.3, 0.7]))
        >>> reference.lookup(torch.tensor([2, 0]))
        tensor([0.7000, 0.1000])

    Note:
        **DDP**: computed once (on every rank, or on one rank and loaded from a file by all); a lookup
        reads only the batch's ids. **Resume**: the losses do not change during training; `save` them
        next to the checkpoints and `load` them in the resumed run (bit-for-bit the same values).
    """

    def __init__(self, losses: Tensor) -> None:
        if not isinstance(losses, Tensor) or losses.ndim != 1 or not losses.is_floating_point():
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(f"losses must be a 1-D floating-point tensor (one loss per example id), got {shape}.")
        self.losses = losses.detach().float().cpu()
        self._on_device: dict[torch.device, Tensor] = {}

    def __len__(self) -> int:
        return self.losses.numel()

    def lookup(self, index: Tensor) -> Tensor:
        """The losses of the example ids ``index``, on ``index``'s device (copied there once).

        Raises:
            TypeError: ``index`` does not hold integers.
            ValueError: an id is outside ``0 .. len(self) - 1`` (a negative id would wrap around to the end
                of the table); the message names the ids. The check reads the ids' minimum and maximum,
                one two-number copy to the host per lookup (a synchronisation when ``index`` is on a GPU,
                next to the selection's own copy of the scores). A reference made for a larger dataset
                passes it: pair a reference with its training set by `check_size`, at setup.
        """
        if index.is_floating_point() or index.dtype == torch.bool:
            raise TypeError(f"index must hold integer example ids, got dtype {index.dtype}.")
        if index.numel():
            low, high = (int(value) for value in torch.aminmax(index.detach()))
            if low < 0 or high >= len(self):
                bad = " and ".join(str(v) for v in dict.fromkeys(v for v in (low, high) if not 0 <= v < len(self)))
                valid = f"0 .. {len(self) - 1}" if len(self) else "none: the reference has no losses"
                raise ValueError(
                    f"Example ids {bad} have no reference loss: valid ids are {valid} ({len(self)} losses, one per "
                    "example of the training set the reference was computed for)."
                )
        table = self._on_device.get(index.device)
        if table is None:
            table = self._on_device[index.device] = self.losses.to(index.device)
        return table[index.long()]

    def check_size(self, num_examples: int) -> None:
        """Raise a ``ValueError`` naming both sizes unless there is one loss per example of the dataset."""
        if num_examples != len(self):
            raise ValueError(
                f"The reference has {len(self)} losses but the training dataset has {num_examples} examples."
            )

    # ----------------------------------------------------------------------------------- files

    def save(self, path: str | Path) -> None:
        """Write a file that `load` reads (``torch.load(weights_only=True)``: a tensor and a version)."""
        torch.save({"version": STATE_VERSION, "losses": self.losses.clone()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a file written by `save`."""
        state = torch.load(str(path), weights_only=True)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise ValueError(
                f"{path} holds reference losses of version {version!r}; this release reads {STATE_VERSION}."
            )
        return cls(state["losses"])

    def to_dataset(self) -> datasets.Dataset:
        """The losses as a ``datasets.Dataset`` with columns ``index`` and ``irreducible_loss``."""
        import datasets

        return datasets.Dataset.from_dict({"index": torch.arange(len(self)).numpy(), LOSS_COLUMN: self.losses.numpy()})

    def to_parquet(self, path: str | Path) -> None:
        """Write `to_dataset` as a parquet file."""
        self.to_dataset().to_parquet(str(path))

    @classmethod
    def from_dataset(
        cls, dataset: datasets.Dataset, *, index_column: str = "index", loss_column: str = LOSS_COLUMN
    ) -> Self:
        """Read a table with one row per id ``0 .. N-1`` (any order), e.g. `to_dataset`'s or a parquet file's.

        Raises:
            ValueError: a column is missing (the message names it and the columns there are), or the ids
                are not each of ``0 .. N-1`` exactly once.
        """
        for column in (index_column, loss_column):
            if column not in dataset.column_names:
                raise ValueError(f"The table has no column {column!r}; its columns are {dataset.column_names}.")
        ids = torch.as_tensor(dataset[index_column]).long()
        if not torch.equal(torch.sort(ids).values, torch.arange(ids.numel())):
            raise ValueError(f"Column {index_column!r} must hold each id 0 .. {ids.numel() - 1} exactly once.")
        losses = torch.empty(ids.numel())
        losses[ids] = torch.as_tensor(dataset[loss_column]).float()
        return cls(losses)

    @classmethod
    def from_parquet(cls, path: str | Path, **kwargs: Any) -> Self:
        """Read a parquet file written by `to_parquet` (options as `from_dataset`)."""
        import datasets

        return cls.from_dataset(datasets.Dataset.from_parquet(str(path)), **kwargs)


def irreducible_losses(
    model: nn.Module,
    dataset: Dataset[Any],
    per_example_loss: Callable[[nn.Module, Any], Tensor],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    num_workers: int = 0,
) -> ReferenceLosses:
    """Per-example losses of a frozen ``model`` over a map-style ``dataset``, by id (the dataset position).

    The model runs in eval mode under ``torch.no_grad()`` and gets its training mode back afterwards;
    the dataset is read in order, so ``losses[i]`` belongs to ``dataset[i]``, the id `WithIndex` gives it.

    Args:
        model: the holdout ("irreducible loss") model.
        dataset: the training set, map-style (for a stream, score on the fly with `FrozenReference`).
        per_example_loss: ``(model, batch) -> (B,)`` unreduced losses, the same as in ``training_step``.
        batch_size: examples per forward.
        device: where to run; the model's device when ``None``.
        collate_fn: the ``DataLoader``'s collate function.
        num_workers: the ``DataLoader``'s workers.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 1]))
        >>> loss = lambda model, batch: nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="none")
        >>> irreducible_losses(nn.Linear(2, 2), data, loss).losses.shape
        torch.Size([3])
    """
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise TypeError(
            f"irreducible_losses needs a map-style dataset with a length, got {type(dataset).__name__}; "
            "for a stream, score each batch on the fly with FrozenReference."
        )
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn, num_workers=num_workers)
    was_training = model.training
    model.eval()
    parts: list[Tensor] = []
    try:
        with torch.no_grad():
            for batch in loader:
                losses = per_example_loss(model, move_data_to_device(batch, device))
                expected = min(batch_size, len(dataset) - sum(part.numel() for part in parts))
                if tuple(losses.shape) != (expected,):
                    raise ValueError(
                        f"per_example_loss returned shape {tuple(losses.shape)} for a batch of {expected} examples: "
                        "it must return one unreduced loss per example of the batch."
                    )
                parts.append(losses.detach().float().cpu())
    finally:
        model.train(was_training)
    return ReferenceLosses(torch.cat(parts) if parts else torch.empty(0))


def vocabulary_size(model: nn.Module) -> int | None:
    """The output vocabulary of a language model: ``config.vocab_size``, else its output embeddings' rows.

    Examples:
        >>> class LM(nn.Module):
        ...     def get_output_embeddings(self) -> nn.Module:
        ...         return nn.Linear(4, 10)
        >>> vocabulary_size(LM()), vocabulary_size(nn.Linear(2, 2))
        (10, None)
    """
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(size, int):
        return size
    embeddings = getattr(model, "get_output_embeddings", None)
    head = embeddings() if callable(embeddings) else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, Tensor) else None


def _vocabulary(tokenizer: Any) -> Mapping[str, int]:
    if isinstance(tokenizer, Mapping):
        return tokenizer
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if not callable(get_vocab):
        raise TypeError(
            f"Expected a tokenizer with get_vocab() or a mapping of token to id, got {type(tokenizer).__name__}."
        )
    vocabulary: Mapping[str, int] = get_vocab()
    return vocabulary


def vocabulary_fingerprint(tokenizer: Any) -> str:
    """A hash of a tokenizer's token-to-id mapping: equal exactly when two tokenizers number every token alike.

    Per-token reference losses compare the token with the same id in two models, so two tokenizers of
    the same size that number their tokens differently (Llama 2's and Mistral's both have 32,000) make
    them compare different tokens; their fingerprints differ. BLAKE2b over every ``(id, token)`` pair in
    id order, each length-prefixed (no separator can clash with a token); added tokens count.

    Args:
        tokenizer: a Hugging Face tokenizer (anything with ``get_vocab()``), or a mapping of token to id.

    Examples:
        >>> vocabulary_fingerprint({"a": 0, "b": 1}) == vocabulary_fingerprint({"b": 1, "a": 0})
        True
        >>> vocabulary_fingerprint({"a": 0, "b": 1}) == vocabulary_fingerprint({"a": 1, "b": 0})
        False
    """
    digest = hashlib.blake2b(digest_size=16)
    for token, token_id in sorted(_vocabulary(tokenizer).items(), key=lambda item: (item[1], item[0])):
        text = token.encode("utf-8", "surrogatepass")
        digest.update(int(token_id).to_bytes(8, "little", signed=True) + len(text).to_bytes(8, "little") + text)
    return digest.hexdigest()


def _first_difference(trained: Mapping[str, int], reference: Mapping[str, int]) -> str:
    """Where two vocabularies part, in words: the lowest id with different tokens."""
    by_id = [{token_id: token for token, token_id in vocabulary.items()} for vocabulary in (trained, reference)]
    for token_id in sorted(set(by_id[0]) | set(by_id[1])):
        mine, theirs = (ids.get(token_id) for ids in by_id)
        if mine != theirs:
            return f"id {token_id} is {mine!r} for the trained model and {theirs!r} for the reference"
    return "the same ids and tokens, but another order of equal-id tokens"


class FrozenReference(nn.Module):
    """A reference model that is always in eval mode, computes no gradients and is never trained.

    Use it to score streams on the fly: the irreducible loss of RHO-LOSS from a holdout model, or the
    per-token reference loss of Rho-1 (Lin et al., "Not All Tokens Are What You Need for Pretraining",
    NeurIPS 2024). ``train()`` leaves it in eval mode (Lightning calls ``train()`` on the whole module
    every epoch), its parameters have ``requires_grad=False`` and ``forward`` runs under
    ``torch.no_grad()`` (Lightning's warning that modules are in eval mode at the start of training
    counts these, on purpose). Given ``vocab_size`` (the trained model's, see `vocabulary_size`), it fails at
    construction when the reference's vocabulary differs, or at its first forward when that is the
    first time the vocabulary shows (the logits' last dimension). A size says nothing about which token
    each id is: given the trained model's ``tokenizer`` and the ``reference_tokenizer`` too, it fails at
    construction unless both number every token alike (`vocabulary_fingerprint`), naming the first id
    where they part.

    Args:
        model: the reference model.
        vocab_size: the trained model's vocabulary size, for a per-token reference; ``None`` skips the check.
        tokenizer: the trained model's tokenizer (or its token-to-id mapping), with ``reference_tokenizer``.
        reference_tokenizer: the reference model's tokenizer; both or neither.

    Examples:
        >>> reference = FrozenReference(nn.Linear(2, 3)).train()
        >>> reference.training, reference(torch.ones(1, 2)).requires_grad
        (False, False)
        >>> words, renumbered = {"a": 0, "b": 1}, {"b": 0, "a": 1}
        >>> FrozenReference(nn.Linear(2, 3), tokenizer=words, reference_tokenizer=renumbered)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: The reference's tokenizer (dict, 2 tokens) numbers its tokens differently ...: id 0 is 'a' ...

    Note:
        **DDP**: as a submodule of the LightningModule it is replicated like the model; DDP ignores its
        parameters (they need no gradient). Filter them out in ``configure_optimizers``
        (``[p for p in self.parameters() if p.requires_grad]``) to keep them out of the optimizer state.
        **Resume**: its weights are in the module's checkpoint and do not change.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        vocab_size: int | None = None,
        tokenizer: Any = None,
        reference_tokenizer: Any = None,
    ) -> None:
        super().__init__()
        if vocab_size is not None and (
            isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1
        ):
            raise ValueError(f"vocab_size must be a positive integer or None, got {vocab_size!r}.")
        if (tokenizer is None) != (reference_tokenizer is None):
            given = "tokenizer" if reference_tokenizer is None else "reference_tokenizer"
            raise ValueError(f"tokenizer and reference_tokenizer go together: got only {given}.")
        #: `vocabulary_fingerprint` of both tokenizers when they were given and agree, else ``None``.
        self.vocabulary_fingerprint: str | None = None
        if tokenizer is not None:
            self.vocabulary_fingerprint = _check_tokenizers(tokenizer, reference_tokenizer)
        self.model = model.requires_grad_(False).eval()
        self.vocab_size = vocab_size
        if vocab_size is not None:
            self._check_vocabulary(vocabulary_size(model))
        super().train(False)

    @override
    def train(self, mode: bool = True) -> Self:
        return super().train(False)

    @override
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            output = self.model(*args, **kwargs)
        logits = getattr(output, "logits", output)
        if isinstance(logits, Tensor) and logits.ndim >= 1:
            self._check_vocabulary(logits.shape[-1])
        return output

    def _check_vocabulary(self, size: int | None) -> None:
        if self.vocab_size is not None and size is not None and size != self.vocab_size:
            raise ValueError(
                f"The reference model has a vocabulary of {size} tokens but the trained model has "
                f"{self.vocab_size}: per-token losses would compare different tokens. Use a reference with the "
                "trained model's tokenizer."
            )


def _check_tokenizers(tokenizer: Any, reference_tokenizer: Any) -> str:
    """The shared `vocabulary_fingerprint`; a ``ValueError`` naming the first differing id when there is none."""
    trained, reference = _vocabulary(tokenizer), _vocabulary(reference_tokenizer)
    fingerprint = vocabulary_fingerprint(trained)
    if vocabulary_fingerprint(reference) != fingerprint:
        raise ValueError(
            f"The reference's tokenizer ({_describe(reference_tokenizer, reference)}) numbers its tokens "
            f"differently from the trained model's ({_describe(tokenizer, trained)}): "
            f"{_first_difference(trained, reference)}. Per-token losses would compare different tokens; use a "
            "reference with the trained model's tokenizer."
        )
    return fingerprint


def _describe(tokenizer: Any, vocabulary: Mapping[str, int]) -> str:
    """A tokenizer in words: its name or folder when it has one, and its number of tokens."""
    name = getattr(tokenizer, "name_or_path", None)
    kind = repr(name) if isinstance(name, str) and name else type(tokenizer).__name__
    return f"{kind}, {len(vocabulary)} tokens"

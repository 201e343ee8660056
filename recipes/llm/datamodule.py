"""`InstructionDataModule`: instruction data, held-out validation and test splits, and the curriculum's train loader."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning_curricula.recipes.interface import MetricKind, MissingScoresError, MonitoredMetrics, RecipeDataModule
from lightning_curricula.recipes.llm.batching import MEGA_BATCHES, length_grouped_loader
from lightning_curricula.recipes.llm.data import (
    CausalLMCollator,
    Scorer,
    Truncation,
    detect_shape,
    load_instruction_dataset,
    load_reasoning_gym,
    make_scorer,
    prepare_dataset,
    split_by_difficulty,
)
from lightning_curricula.recipes.llm.metrics import FAMILIES_SPLIT
from lightning_curricula.recipes.llm.model import SMOLLM2, load_tokenizer
from lightning_curricula.recipes.llm.packing import PackingCollator
from lightning_curricula.recipes.llm.report import DifficultyReport
from lightning_curricula.recipes.llm.testbed import TESTBED_PREFIX, load_testbed, parse_testbed, testbed_scorer
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from lightning_curricula import FullData, Policy, ScoreCurriculum, ShardedStream, WithIndex, curriculum_dataloader

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

__all__ = ["REASONING_GYM_PREFIX", "TESTBED_EVAL_SIZE", "TESTBED_TRAIN_SIZE", "InstructionDataModule"]

log = logging.getLogger(__name__)

#: ``dataset="reasoning_gym:<task>"`` generates that reasoning-gym task.
REASONING_GYM_PREFIX = "reasoning_gym:"
#: ``train_size`` and ``eval_size`` when not given: the testbed's (all families together; per family), and the others'.
TESTBED_TRAIN_SIZE, TESTBED_EVAL_SIZE = 2000, 150
_TRAIN_SIZE, _EVAL_SIZE = 1000, 256
#: The scores `CausalLMFineTuner.compute_example_scores` computes when fitting starts.
_FIT_START_SCORES = ("ifd", "ifd_below_1", "initial_loss", "response_loss")


class InstructionDataModule(RecipeDataModule):
    """Instruction data for `CausalLMFineTuner`: tokenised training rows and held-out splits.

    Two held-out pools of ``eval_size`` examples each, disjoint from each other and from the training
    rows: the **validation** pool (``val_dataloader``: per-epoch metrics, "best" epochs, every setting
    chosen from results) and the **test** pool (``test_dataloader``: evaluated once after training, by
    ``trainer.test``, for the report). Each pool with a ``difficulty`` column is split into its easiest
    and hardest ``eval_fraction``, ``easy`` and ``hard``; without one it is one ``heldout`` split.
    `monitored_metrics` says what runs are judged by: ``val/hard/accuracy``, ``val/heldout/accuracy``, or
    the split's loss (lower is better) when no answer can be graded (the ``text`` shape, or a model that
    generates nothing). The **testbed** has one split per family instead (``val/<family>/accuracy``,
    ``val/<family>/loss``, the same under ``test/``), and its runs are judged by ``val/families/accuracy``,
    the mean over its families that `FamilyMeans` logs (``val/families/loss`` without generation).

    **Shapes** (`prepare_dataset`): conversations (Alpaca, question/answer, chat ``messages``,
    prompt/completion with text or TRL's lists of messages) train on the assistant's answers, every
    assistant turn of a chat; ``text`` rows (continued pretraining) train on every token, have no
    answer to grade, and no IFD (their per-example difficulty is the learned loss).

    **Sources** (``dataset``):

    - ``"reasoning_gym:<task>"`` (the offline default ``reasoning_gym:basic_arithmetic``):
      ``train_size`` generated problems with a known ``difficulty`` (`load_reasoning_gym`, seed
      ``seed``); the held-out pools are generated from other seeds, questions seen in training (and, for
      the test pool, in validation) removed. Answers are graded by reasoning-gym's checker.
    - ``"testbed"`` or ``"testbed:<family>,<family>"`` (`TESTBED_FAMILIES`): reasoning-gym families at a
      small model's level (`load_testbed`): ``train_size`` training problems in all (2,000 by default), split
      evenly over the families (rounded up), and ``eval_size`` validation and as many test problems per
      family (150 by default), the three disjoint. Rows carry ``family`` and ``difficulty``; each answer is
      graded by its own family's reasoning-gym scorer (`testbed_scorer`).
    - a local ``.json`` / ``.jsonl`` / ``.parquet`` / ``.csv`` file, a ``save_to_disk`` folder, or a hub
      name (`load_instruction_dataset`): ``2 * eval_size`` random rows are held out (seeded), the first
      half for validation, the second for test. Answers are graded by `normalized_match`.

    Rows are tokenised by `prepare_dataset` (see it for the over-long rule). The train loader is
    `curriculum_dataloader` with ``policy`` (with ``group_by_length``, its sampler a `LengthGroupedSampler`).
    A `ScoreCurriculum` without scores is given the column named by its ``score`` (``difficulty``), or the
    module's ``example_scores`` of that name (``ifd``, ``initial_loss``; set ``fit_start_scores: true`` on the
    model).

    Args:
        dataset: the source, see above.
        tokenizer: a tokenizer or a name for `load_tokenizer`.
        train_size: training examples: generated (1,000 by default; the testbed: in all, 2,000 by default), or the
            first of the shuffled source (1,000 by default; ``0``: all of it).
        eval_size: held-out examples in each of the validation and test pools, before the easy / hard split (256 by
            default); for the testbed, per family (150 by default).
        eval_fraction: the share of the held-out pool in each of ``easy`` and ``hard``, in ``(0, 0.5]``.
        seed: seed of the generation and of the held-out draw.
        task_config: reasoning-gym config overrides (``min_terms``, ``max_terms``, ...).
        levels: reasoning-gym difficulty levels (see `load_reasoning_gym`).
        split: the source's split.
        max_length: see `prepare_dataset`.
        truncation: see `prepare_dataset`.
        shape: see `prepare_dataset`.
        system_prompt: see `to_conversation`.
        batch_size: training batch size per rank.
        eval_batch_size: validation batch size per rank.
        num_workers: ``DataLoader`` workers.
        policy: what to plan each epoch (`FullData` by default).
        plan_seed: seed of the plans (by default ``seed``).
        streaming: read the training rows as a stream (a Hugging Face ``IterableDataset``, shuffled per
            epoch from ``plan_seed`` with a ``shuffle_buffer``-row buffer) through
            `lightning_curricula.ShardedStream`: every row once per epoch over ranks and workers, equal
            batch counts on every rank. Rows keep their stable ``index`` (their position in the
            prepared data). Epoch policies need the whole dataset by id and are refused; selection inside
            the step works (Rho-1, Selective Backprop, RHO-LOSS, and Stale-SB, whose epochs between scorings
            then select each loaded batch by its remembered scores: a stream loads every row).
        shuffle_buffer: rows in the stream's shuffle buffer.
        group_by_length: batch training examples of similar lengths, as Hugging Face Trainer's ``group_by_length``
            (less padding): the sampler is a `LengthGroupedSampler`, which yields this rank's share of each epoch's
            plan, the same visits, reordered inside windows of ``length_group_batches`` batches (the plan's order
            is kept from window to window). Not with ``streaming``.
        length_group_batches: batches per window of ``group_by_length``.
        packing: pack each training batch's examples end to end into rows of at most ``pack_length``
            tokens (`PackingCollator`, at the width that computes the fewest tokens), each example still
            with its own loss, id and weight and attending only to itself. The model must read packed
            sequences from position ids (``transformers``' Llama family does). Validation and test
            batches stay padded.
        pack_length: the widest packed row (by default ``max_length``; at least ``max_length``).
    """

    def __init__(
        self,
        dataset: str = f"{REASONING_GYM_PREFIX}basic_arithmetic",
        tokenizer: str | PreTrainedTokenizerBase = SMOLLM2,
        *,
        train_size: int | None = None,
        eval_size: int | None = None,
        eval_fraction: float = 0.25,
        seed: int = 0,
        task_config: dict[str, Any] | None = None,
        levels: list[dict[str, Any]] | None = None,
        split: str = "train",
        max_length: int = 128,
        truncation: Truncation = "prompt",
        shape: str | None = None,
        system_prompt: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        policy: Policy | None = None,
        plan_seed: int | None = None,
        streaming: bool = False,
        shuffle_buffer: int = 1000,
        group_by_length: bool = False,
        length_group_batches: int = MEGA_BATCHES,
        packing: bool = False,
        pack_length: int | None = None,
    ) -> None:
        super().__init__()
        #: The testbed's families (``dataset="testbed..."``), else empty: one held-out split each.
        self.families = parse_testbed(dataset) if dataset.split(":")[0] == TESTBED_PREFIX else []
        if train_size is None:
            train_size = TESTBED_TRAIN_SIZE if self.families else _TRAIN_SIZE
        if eval_size is None:
            eval_size = TESTBED_EVAL_SIZE if self.families else _EVAL_SIZE
        if train_size < 0 or eval_size < 0 or batch_size < 1 or eval_batch_size < 1:
            raise ValueError(
                f"train_size and eval_size must be >= 0 and the batch sizes >= 1, got {train_size}, {eval_size}, "
                f"{batch_size} and {eval_batch_size}."
            )
        if streaming and policy is not None and not isinstance(policy, FullData):
            raise ValueError(
                f"streaming=True reads the rows in stream order, so an epoch policy cannot choose them; got "
                f"{type(policy).__name__}. Use policy FullData (or none), or streaming=False."
            )
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer!r}.")
        if length_group_batches < 1:
            raise ValueError(f"length_group_batches must be >= 1, got {length_group_batches!r}.")
        if group_by_length and streaming:
            raise ValueError(
                "group_by_length=True reorders each epoch's plan by length, and streaming=True reads the rows in "
                "stream order; use one of them."
            )
        if pack_length is not None and pack_length < max_length:
            raise ValueError(
                f"pack_length={pack_length} is below max_length={max_length}: the longest example would not fit a "
                "packed row. Leave pack_length unset (it is then max_length) or raise it."
            )
        self.save_hyperparameters(ignore=["tokenizer", "policy"])
        self.source = dataset
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.train_size = train_size
        self.eval_size = eval_size
        self.eval_fraction = eval_fraction
        self.seed = seed
        self.task_config = dict(task_config or {})
        self.levels = levels
        self.split = split
        self.max_length = max_length
        self.truncation: Truncation = truncation
        self.shape = shape
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.policy = policy
        self.plan_seed = seed if plan_seed is None else plan_seed
        self.streaming = streaming
        self.shuffle_buffer = shuffle_buffer
        self.group_by_length = group_by_length
        self.length_group_batches = length_group_batches
        self.packing = packing
        self.pack_length = max_length if pack_length is None else pack_length
        self.scorer: Scorer | None = None
        #: The shape of the rows (``shape``, or the one detected), set by `setup`.
        self.data_shape: str | None = None
        self.train_dataset: datasets.Dataset | None = None
        self.val_datasets: dict[str, datasets.Dataset] = {}
        self.test_datasets: dict[str, datasets.Dataset] = {}

    @property
    def val_split_names(self) -> list[str]:
        """Names of the validation splits, in the order of `val_dataloader`."""
        return list(self.val_datasets)

    @property
    def test_split_names(self) -> list[str]:
        """Names of the test splits, in the order of `test_dataloader`."""
        return list(self.test_datasets)

    @property
    def graded(self) -> bool:
        """Whether held-out answers can be graded: every shape but ``text`` has a reference answer (after `setup`)."""
        return self.data_shape != "text"

    @override
    def setup(self, stage: str) -> None:
        if self.train_dataset is None:
            train_rows, validation, test = self._rows()
            self.data_shape = self.shape or detect_shape(train_rows.column_names)
            if not self.graded:
                self.scorer = None  # text has no answers
            self.train_dataset = self._prepare(train_rows)
            self.val_datasets = self._held_out_splits(validation)
            self.test_datasets = self._held_out_splits(test)
        module = self.trainer.lightning_module if self.trainer is not None else None
        if not self.graded and getattr(module, "fit_start_scores", False):
            raise ValueError(
                "fit_start_scores=True computes IFD, which compares each answer's loss with and without its prompt; "
                "text rows (continued pretraining, loss on every token) have no prompt. Their per-example difficulty "
                "is the learned loss: set model.fit_start_scores false and rank by a tracked signal (loss, loss_ema)."
            )

    @override
    def monitored_metrics(self, *, model: pl.LightningModule | None = None) -> MonitoredMetrics:
        """What runs are judged by, from the validation splits and whether answers are graded (after ``setup``).

        ``val/hard/accuracy`` with a ``difficulty`` column, ``val/heldout/accuracy`` without one, and the
        split's ``loss`` (lower is better) when no answer can be graded: ``text`` rows, or a ``model``
        whose ``max_new_tokens`` is 0. The test metric is the same on the test splits. On the testbed:
        ``val/families/accuracy``, the mean over its families (``val/families/loss`` without generation),
        with every family's own metrics recorded.

        Raises:
            ValueError: there is no validation split (``eval_size=0``).
        """
        assert self.train_dataset is not None, "setup() builds the data"
        names = self.val_split_names
        if not names:
            raise ValueError(f"No validation split to judge runs by (eval_size={self.eval_size}); give eval_size > 0.")
        if self.families:
            return self._testbed_metrics(names, generates=getattr(model, "max_new_tokens", 1) > 0)
        split = "hard" if "hard" in names else names[0]
        others = [name for name in names if name != split]
        title = {"heldout": "held-out"}.get(split, split)
        if self.graded and getattr(model, "max_new_tokens", 1) > 0:
            note = "" if split == "hard" else _HELDOUT_ACCURACY_NOTE
            return MonitoredMetrics(
                metric=f"val/{split}/accuracy",
                test_metric=f"test/{split}/accuracy",
                label=f"validation {title} accuracy",
                column=f"{split} acc",
                kind="accuracy",
                recorded=(*(f"val/{name}/accuracy" for name in others), *(f"val/{name}/loss" for name in names)),
                extras={
                    **{f"test {name} acc (%)": f"test/{name}/accuracy" for name in others},
                    f"test {split} loss": f"test/{split}/loss",
                },
                note=note,
            )
        why = "text rows have no answers to grade" if not self.graded else "the model generates no answers"
        return MonitoredMetrics(
            metric=f"val/{split}/loss",
            test_metric=f"test/{split}/loss",
            label=f"validation {title} loss",
            column=f"{split} loss",
            kind="loss",
            recorded=tuple(f"val/{name}/loss" for name in others),
            extras={f"test {name} loss": f"test/{name}/loss" for name in others},
            note=_LOSS_NOTE.format(split=split, why=why),
        )

    def _testbed_metrics(self, families: list[str], *, generates: bool) -> MonitoredMetrics:
        """The testbed's: the mean over ``families`` (`FamilyMeans`), each family's own recorded beside it."""
        kind: MetricKind = "accuracy" if generates else "loss"
        short = "acc" if generates else "loss"
        others = ("loss",) if generates else ()
        return MonitoredMetrics(
            metric=f"val/{FAMILIES_SPLIT}/{kind}",
            test_metric=f"test/{FAMILIES_SPLIT}/{kind}",
            label=f"validation {kind}, mean over families",
            column=f"families {short}",
            kind=kind,
            recorded=(
                *(f"val/{name}/{kind}" for name in families),
                *(f"val/{FAMILIES_SPLIT}/{other}" for other in others),
                *(f"val/{name}/{other}" for name in families for other in others),
            ),
            extras={
                **{f"test {name} {short}{' (%)' if generates else ''}": f"test/{name}/{kind}" for name in families},
                **{f"test families {other}": f"test/{FAMILIES_SPLIT}/{other}" for other in others},
            },
            note=_TESTBED_NOTE.format(
                families=", ".join(families),
                measure="accuracy" if generates else "loss (lower is better; the model generates no answers)",
            ),
        )

    def _held_out_splits(self, pool: datasets.Dataset) -> dict[str, datasets.Dataset]:
        if self.families:  # one split per family, in the testbed's order
            family = list(pool["family"]) if len(pool) else []
            rows = {name: [i for i, value in enumerate(family) if value == name] for name in self.families}
            return {name: self._prepare(pool.select(ids)) for name, ids in rows.items() if ids}
        if "difficulty" in pool.column_names and len(pool) >= 2:
            easy, hard = split_by_difficulty(pool, self.eval_fraction)
            return {"easy": self._prepare(easy), "hard": self._prepare(hard)}
        return {"heldout": self._prepare(pool)} if len(pool) else {}

    def _rows(self) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset]:
        """The training rows and the validation and test pools, disjoint."""
        if self.families:
            if not self.train_size:
                raise ValueError("The testbed is generated: give train_size > 0 (0 means 'all' for files only).")
            self.scorer = testbed_scorer()
            per_family = -(-self.train_size // len(self.families))  # rounded up: at least train_size in all
            return load_testbed(
                self.families, train_per_family=per_family, eval_per_family=self.eval_size, seed=self.seed
            )
        if self.source.startswith(REASONING_GYM_PREFIX):
            task = self.source[len(REASONING_GYM_PREFIX) :]
            self.scorer = make_scorer(task)
            if not self.train_size:
                raise ValueError("reasoning-gym data is generated: give train_size > 0 (0 means 'all' for files only).")
            train = load_reasoning_gym(task, self.train_size, self.seed, levels=self.levels, **self.task_config)
            seen = set(train["question"])
            pools = []
            for offset in (1_000_003, 2_000_003):  # validation, then test: other seeds, seen questions removed
                pool = self._generated_pool(task, self.seed + offset, seen)
                seen |= set(pool["question"])
                pools.append(pool)
            return train, pools[0], pools[1]
        self.scorer = make_scorer()
        rows = load_instruction_dataset(self.source, split=self.split)
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.seed)).tolist()
        validation, test = order[: self.eval_size], order[self.eval_size : 2 * self.eval_size]
        rest = order[2 * self.eval_size :]
        train = rest[: self.train_size] if self.train_size else rest
        return rows.select(sorted(train)), rows.select(sorted(validation)), rows.select(sorted(test))

    def _generated_pool(self, task: str, seed: int, seen: set[str]) -> datasets.Dataset:
        if not self.eval_size:
            return load_reasoning_gym(task, 1, seed, levels=self.levels, **self.task_config).select([])
        pool = load_reasoning_gym(task, self.eval_size, seed, levels=self.levels, **self.task_config)
        fresh = [i for i, question in enumerate(pool["question"]) if question not in seen]
        if len(fresh) < len(pool):
            log.info("Removed %d held-out questions seen in an earlier split.", len(pool) - len(fresh))
        return pool.select(fresh)

    def _prepare(self, rows: datasets.Dataset) -> datasets.Dataset:
        kept = [c for c in rows.column_names if c.startswith("difficulty") or c in ("metadata", "family")]
        prepared, _ = prepare_dataset(
            rows,
            self.tokenizer,
            max_length=self.max_length,
            shape=self.shape,
            system_prompt=self.system_prompt,
            truncation=self.truncation,
            keep_columns=kept,
        )
        return prepared

    @override
    def split_sizes(self) -> tuple[int, int, int]:
        """Training examples, and the examples of all validation and of all test splits, after ``setup("fit")``."""
        assert self.train_dataset is not None, "setup() builds the data"
        held_out = (sum(len(split) for split in splits.values()) for splits in (self.val_datasets, self.test_datasets))
        return len(self.train_dataset), *held_out

    @override
    def final_metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        """The last logged scalars, with the rank correlations of a `DifficultyReport` (sent to the logger only)."""
        metrics = super().final_metrics(trainer)
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, DifficultyReport):
                metrics |= {f"rank_correlation/{name}": value for name, value in callback.correlations.items()}
        return metrics

    @override
    def bound_policy(self) -> Policy | None:
        """The policy, a `ScoreCurriculum` given its scores (a column of the data, or the module's example scores)."""
        policy = self.policy
        if not isinstance(policy, ScoreCurriculum) or policy.scores is not None or policy.order == "random":
            return policy
        assert self.train_dataset is not None
        if policy.score in self.train_dataset.column_names:
            return policy.with_scores(torch.tensor(list(self.train_dataset[policy.score]), dtype=torch.float32))
        if policy.score not in _FIT_START_SCORES or not self.graded:
            reason = (
                "text rows (continued pretraining) have no prompt, so no IFD or pre-training answer loss: their "
                "per-example difficulty is the learned loss (use Curriculum with signal loss or loss_ema)"
                if policy.score in _FIT_START_SCORES
                else f"nor a score the model computes ({', '.join(_FIT_START_SCORES)}, with fit_start_scores: true)"
            )
            raise MissingScoresError(
                f"ScoreCurriculum ranks by {policy.score!r}, which is not a column of the training data "
                f"({self.train_dataset.column_names}); {reason}."
            )
        module = self.trainer.lightning_module if self.trainer is not None else None
        computed = getattr(module, "example_scores", {}) or {}
        if policy.score not in computed:
            raise ValueError(
                f"ScoreCurriculum ranks by {policy.score!r}, which is neither a column of the training data "
                f"({self.train_dataset.column_names}) nor a score the model computed ({sorted(computed)}); for "
                "'ifd' or 'initial_loss' set fit_start_scores: true on the model."
            )
        return policy.with_scores(computed[policy.score])

    def train_collator(self) -> CausalLMCollator | PackingCollator:
        """The training batches' collator: padded, with the packed rows beside them when ``packing``."""
        collate = CausalLMCollator(self.tokenizer)
        return PackingCollator(collate, self.pack_length) if self.packing else collate

    @override
    def train_dataloader(self) -> DataLoader[Any]:
        assert self.train_dataset is not None, "setup() builds the training data"
        if self.streaming:
            return self._stream_loader(self.train_dataset)
        loader = curriculum_dataloader(
            WithIndex(self.train_dataset),
            self.trainer,
            self.bound_policy(),
            seed=self.plan_seed,
            batch_size=self.batch_size,
            collate_fn=self.train_collator(),
            num_workers=self.num_workers,
        )
        if not self.group_by_length:
            return loader
        return length_grouped_loader(
            loader,
            lengths=list(self.train_dataset["length"]),
            batch_size=self.batch_size,
            mega_batches=self.length_group_batches,
        )

    def _stream_loader(self, rows: datasets.Dataset) -> DataLoader[Any]:
        trainer = self.trainer
        assert trainer is not None
        indexed = rows.add_column("index", list(range(len(rows))))
        stream = indexed.to_iterable_dataset(num_shards=min(len(rows), 64)).shuffle(
            seed=self.plan_seed, buffer_size=self.shuffle_buffer
        )
        sharded = ShardedStream(
            _SizedStream(stream, len(rows)),
            batch_size=self.batch_size,
            collate_fn=self.train_collator(),
            num_replicas=trainer.world_size,
            rank=trainer.global_rank,
        )
        sharded.set_epoch(trainer.current_epoch)  # a new shuffle each epoch, the same on every rank and on resume
        return DataLoader(sharded, batch_size=None, num_workers=self.num_workers)

    @override
    def val_dataloader(self) -> list[DataLoader[Any]]:
        return self._held_out_loaders(self.val_datasets)

    @override
    def test_dataloader(self) -> list[DataLoader[Any]]:
        return self._held_out_loaders(self.test_datasets)

    def _held_out_loaders(self, splits: dict[str, datasets.Dataset]) -> list[DataLoader[Any]]:
        collate = CausalLMCollator(self.tokenizer, generation=self.graded)  # text: nothing to generate
        return [
            DataLoader(split, batch_size=self.eval_batch_size, collate_fn=collate, num_workers=self.num_workers)  # type: ignore[arg-type]
            for split in splits.values()
        ]


_HELDOUT_ACCURACY_NOTE = (
    "Accuracy: the share of greedy answers that score 1 against the reference (normalised match unless the task "
    "has its own scorer), on two disjoint pools of rows held out of the data, each one `heldout` split (the data "
    "has no difficulty column to split them into easy and hard): validation after every epoch (*best* and the time "
    "to full data's accuracy are read from it), test once after training. Tokens: tokens trained on (policies "
    "plan examples, not tokens)."
)
_TESTBED_NOTE = (
    "Testbed ({families}): one held-out split per family, each answer graded by its family's reasoning-gym scorer. "
    "The headline is the {measure} averaged over the families (every family counts the same): validation after "
    "every epoch (*best* and the time to full data's value are read from it), test once after training, on disjoint "
    "pools. Tokens: tokens trained on (policies plan examples, not tokens)."
)
_LOSS_NOTE = (
    "Loss: the mean per-sequence loss over the tokens that carry loss (every token of a text row, the answers of a "
    "conversation) on two disjoint pools held out of the data (`{split}`): validation after every epoch, test once "
    "after training; no accuracy, because {why}. Tokens: tokens trained on (policies plan examples, not tokens)."
)


class _SizedStream(IterableDataset[Any]):
    """A Hugging Face stream of known length (the prepared rows), so that epochs and LR schedules have a size."""

    def __init__(self, stream: datasets.IterableDataset, length: int) -> None:
        self.stream = stream
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        return iter(self.stream)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle: the stream's shuffle is seeded from its seed and this epoch."""
        self.stream.set_epoch(epoch)

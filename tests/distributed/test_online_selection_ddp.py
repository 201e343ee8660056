"""`OnlineBatchSelection` under DDP: two CPU processes with gloo (``ddp_spawn``).

Each rank selects within its own batch from its own random stream; the counters are summed over ranks by
exactly one all-reduce per epoch (``trainer.strategy.reduce``, which Lightning precedes by a barrier), and
no collective runs per step (counted by wrapping ``torch.distributed``'s collectives while the callback's
code runs); both ranks end with the same metrics. Stale-SB's remembered scores are merged over the ranks, and
through `curriculum_dataloader` each rank's loader selects the stale epoch's batches before loading exactly as
its step would have, also when the plan visits ids twice and the loader's workers fetch ahead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from helpers import ClassificationDataset, make_trainer
from lightning.pytorch.callbacks import Callback
from online_helpers import CurriculumData, SelectiveClassifier
from repeats_helpers import DrawsWithReplacement, PrefetchedRepeats
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from lightning_curricula import CurriculumSampler, OnlineBatchSelection, WithIndex
from lightning_curricula.step.selection import Selection, kept_count

SIZE = 37  # 19 per rank after DistributedSampler's padding: batches of 8, 8, 3
WORLD_SIZE = 2
EPOCHS = 2
KEEP = 0.5
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter", "barrier")


class ShardedData(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader[Any]:
        dataset = WithIndex(ClassificationDataset(SIZE))
        return DataLoader(dataset, batch_size=8, sampler=DistributedSampler(dataset, shuffle=True, seed=0))


class CountingSelection(OnlineBatchSelection):
    """Counts the collectives issued while its own code runs, per epoch and inside `select`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inside = False
        self.collectives_in_epoch_end: list[list[str]] = []
        self.collectives_in_steps = 0
        self.positions: list[list[int]] = []
        self.remembered: list[tuple[int, list[int], list[float]]] = []  # (epoch, ids, scores) per call

    @contextlib.contextmanager
    def in_step(self) -> Iterator[None]:
        outer = self.inside
        self.inside = "step"  # type: ignore[assignment]
        try:
            yield
        finally:
            self.inside = outer

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name in COLLECTIVES:
            setattr(dist, name, self._counting(name, getattr(dist, name)))

    def _counting(self, name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.inside == "epoch_end":
                self.collectives_in_epoch_end[-1].append(name)
            elif self.inside == "step":
                self.collectives_in_steps += 1
            return function(*args, **kwargs)

        return wrapper

    def select(self, scores: Tensor, *, keep: float | None = None, index: Tensor | None = None) -> Selection:
        with self.in_step():
            selection = super().select(scores, keep=keep, index=index)
        self.positions.append(selection.positions.tolist())
        return selection

    def select_remembered(self, index: Tensor, *, keep: float | None = None) -> Selection | None:
        with self.in_step():
            return super().select_remembered(index, keep=keep)

    def remember(self, index: Tensor, scores: Tensor) -> None:
        with self.in_step():  # select calls it too: the context restores what it found
            super().remember(index, scores)
        if self.rescore_every > 1:
            self.remembered.append((self.epoch, index.tolist(), scores.tolist()))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.collectives_in_epoch_end.append([])
        self.inside = "epoch_end"  # type: ignore[assignment]
        try:
            super().on_train_epoch_end(trainer, pl_module)
        finally:
            self.inside = False


class Dump(Callback):
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        selection = next(c for c in trainer.callbacks if isinstance(c, CountingSelection))  # type: ignore[attr-defined]
        assert isinstance(pl_module, SelectiveClassifier)
        state = {
            "metrics": selection.epoch_metrics,
            "totals": selection.state_dict()["totals"],
            "collectives_in_epoch_end": selection.collectives_in_epoch_end,
            "collectives_in_steps": selection.collectives_in_steps,
            "positions": selection.positions,
            "scored_ids": pl_module.scored_ids,
            "kept_ids": pl_module.kept_ids,
            "loaded_sizes": pl_module.loaded_sizes,
            "remembered": selection.remembered,
            "memory": selection.state_dict()["remembered_scores"],
            "parameters": [parameter.detach().clone() for parameter in pl_module.parameters()],
        }
        torch.save(state, self.directory / f"rank{trainer.global_rank}.pt")


def fit_on_two_ranks(
    directory: Path, epochs: int, data: pl.LightningDataModule | None = None, **options: Any
) -> list[dict[str, Any]]:
    trainer = make_trainer(
        max_epochs=epochs,
        callbacks=[CountingSelection(keep=KEEP, seed=4, **options), Dump(str(directory))],
        strategy="ddp_spawn",
        devices=WORLD_SIZE,
        use_distributed_sampler=False,
        reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(SelectiveClassifier(lr=0.1), datamodule=ShardedData() if data is None else data)
    return [torch.load(directory / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return fit_on_two_ranks(tmp_path_factory.mktemp("online_ddp"), EPOCHS, method="random")


@pytest.fixture(scope="module")
def stale_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Stale-SB on two ranks: epochs 0 and 2 score with a forward, epoch 1 selects by remembered scores."""
    return fit_on_two_ranks(tmp_path_factory.mktemp("stale_ddp"), 3, method="top_k", rescore_every=2)


@pytest.fixture(scope="module")
def curriculum_stale_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, list[dict[str, Any]]]:
    """Stale-SB through `curriculum_dataloader`, selecting epoch 1 before loading (True) or in the step (False)."""
    return {
        before: fit_on_two_ranks(
            tmp_path_factory.mktemp(f"preselected_{before}"),
            3,
            CurriculumData(SIZE),
            method="percentile",
            rescore_every=2,
            select_before_loading=before,
        )
        for before in (True, False)
    }


@pytest.fixture(scope="module")
def repeats_stale_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, list[dict[str, Any]]]:
    """Stale-SB with unbiased weights over a plan with repeats, a loader worker per rank fetching ahead."""
    return {
        before: fit_on_two_ranks(
            tmp_path_factory.mktemp(f"repeats_{before}"),
            3,
            PrefetchedRepeats(SIZE, workers=1),
            method="percentile",
            beta=2.0,
            unbiased=True,
            rescore_every=2,
            select_before_loading=before,
        )
        for before in (True, False)
    }


@pytest.mark.slow
def test_one_all_reduce_per_epoch_and_no_collective_per_step(ranks: list[dict[str, Any]]) -> None:
    for state in ranks:
        assert state["collectives_in_epoch_end"] == [["barrier", "all_reduce"]] * EPOCHS
        assert state["collectives_in_steps"] == 0


@pytest.mark.slow
def test_counters_are_summed_over_ranks_and_identical(ranks: list[dict[str, Any]]) -> None:
    kept_per_rank = sum(kept_count(size, KEEP) for size in (8, 8, 3))  # 4 + 4 + 2
    expected = {
        "scored_examples": 38.0,
        "kept_examples": 2.0 * kept_per_rank,
        "kept_share": 2 * kept_per_rank / 38,
        "scoring_forwards": EPOCHS * 38.0,
        "forward_only_passes": EPOCHS * (38.0 - 2 * kept_per_rank),
        "backward_passes": EPOCHS * 2.0 * kept_per_rank,
    }
    assert ranks[0]["metrics"] == ranks[1]["metrics"] == expected
    assert ranks[0]["totals"] == ranks[1]["totals"] == [EPOCHS * 38, EPOCHS * 2 * kept_per_rank, 0, 0, EPOCHS * 6, 0, 0]


@pytest.mark.slow
def test_each_rank_selects_within_its_own_batch_from_its_own_stream(ranks: list[dict[str, Any]]) -> None:
    for state in ranks:
        for scored, kept in zip(state["scored_ids"], state["kept_ids"], strict=True):
            assert len(kept) == kept_count(len(scored), KEEP)
            assert set(kept) <= set(scored)
    for step in range(len(ranks[0]["scored_ids"])):
        assert not set(ranks[0]["scored_ids"][step]) & set(ranks[1]["scored_ids"][step]) or step % 3 == 2
    assert ranks[0]["positions"] != ranks[1]["positions"]  # streams seeded from (seed, rank, call)


@pytest.mark.slow
def test_remembered_scores_are_merged_over_ranks_at_each_epoch_end(stale_ranks: list[dict[str, Any]]) -> None:
    for state in stale_ranks:
        # Epoch 1 reshuffles the ids between the ranks: only merged scores let it skip every scoring forward.
        assert len(state["scored_ids"]) == 6  # epochs 0 and 2, three batches each
        assert len(state["kept_ids"]) == 9
        assert state["collectives_in_epoch_end"] == [["barrier", "all_reduce"] * 3] * 3
        assert state["collectives_in_steps"] == 0
    assert torch.equal(stale_ranks[0]["memory"], stale_ranks[1]["memory"])
    # Each id's score is the last one its rank remembered in the last epoch; the mean of both for the padding repeat.
    last: dict[int, list[float]] = {}
    for state in stale_ranks:
        calls = [zip(ids, values, strict=True) for epoch, ids, values in state["remembered"] if epoch == 2]
        latest = {i: value for call in calls for i, value in call}
        for i, value in latest.items():
            last.setdefault(i, []).append(value)
    assert sorted(last) == list(range(SIZE))
    expected = torch.tensor([sum(last[i]) / len(last[i]) for i in range(SIZE)])
    torch.testing.assert_close(stale_ranks[0]["memory"], expected)
    assert stale_ranks[0]["metrics"]["scoring_forwards"] == 2 * 38.0


@pytest.mark.slow
def test_each_rank_selects_before_loading_what_its_step_would_select(
    curriculum_stale_ranks: dict[bool, list[dict[str, Any]]],
) -> None:
    whole, kept = [8, 8, 3], [4, 4, 2]  # 19 visits per rank after padding, kept_count(n, 0.5) of each batch
    pairs = zip(curriculum_stale_ranks[True], curriculum_stale_ranks[False], strict=True)
    for rank, (loaded, in_step) in enumerate(pairs):
        assert in_step["loaded_sizes"] == whole * 3
        assert loaded["loaded_sizes"] == whole + kept + whole, f"rank {rank}"
        assert loaded["kept_ids"] == in_step["kept_ids"]
        assert loaded["scored_ids"] == in_step["scored_ids"]  # epochs 0 and 2 only
        assert loaded["totals"] == in_step["totals"]
        assert torch.equal(loaded["memory"], in_step["memory"])
        assert loaded["collectives_in_steps"] == 0
    assert torch.equal(curriculum_stale_ranks[True][0]["memory"], curriculum_stale_ranks[True][1]["memory"])
    epoch_1 = [set(sum(state["kept_ids"][3:6], [])) for state in curriculum_stale_ranks[True]]
    assert len(epoch_1[0] & epoch_1[1]) <= 1  # each rank kept from its own shard (one padding repeat is on both)


@pytest.mark.slow
def test_each_rank_selects_a_plan_with_repeats_before_loading_as_its_step_would(
    repeats_stale_ranks: dict[bool, list[dict[str, Any]]],
) -> None:
    pairs = zip(repeats_stale_ranks[True], repeats_stale_ranks[False], strict=True)
    for rank, (loaded, in_step) in enumerate(pairs):
        shard = CurriculumSampler(range(SIZE), DrawsWithReplacement(), num_epochs=3, num_replicas=2, rank=rank)
        shard.set_epoch(1)
        visits = [index for index, _ in shard]
        assert len(set(visits)) < len(visits), f"rank {rank}"  # the stale epoch visits an id twice on this rank
        assert loaded["loaded_sizes"][3:6] == [4, 4, 2], f"rank {rank}"  # epoch 1 loaded the kept examples only
        assert loaded["kept_ids"] == in_step["kept_ids"]
        assert loaded["totals"] == in_step["totals"]  # the worker's look-ahead is not counted
        assert torch.equal(loaded["memory"], in_step["memory"])
        for got, want in zip(loaded["parameters"], in_step["parameters"], strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)  # each visit trained with its own weights

"""The LLM recipe's Stale-SB under DDP: two CPU processes with gloo (``ddp_spawn``), a tiny Llama, top-k at 50%.

Epochs 0 and 2 score every sequence with a forward; epoch 1 selects by the scores remembered in epoch 0, merged over
the ranks, and the train loader selects before loading. Each rank writes what it loaded, trained on and ended with
(`RankStateDump`); the test checks that the ranks agree on what was kept: the same merged scores, counters and
weights on both, and in the stale epoch each rank loaded exactly the top half, by those shared scores, of each batch
its shard of the plan would have made.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import RankStateDump, make_trainer

pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")

from lightning_curricula.recipes.llm.data import ensure_pad_token  # noqa: E402
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.model import tiny_llama, tiny_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.module import CausalLMFineTuner  # noqa: E402

from lightning_curricula import CurriculumSampler, FullData, OnlineBatchSelection  # noqa: E402
from lightning_curricula.step.selection import kept_count  # noqa: E402

WORLD_SIZE = 2
EPOCHS = 3
TRAIN_SIZE = 27  # odd: the plan is padded, so one id is visited on both ranks in each epoch
BATCH = 4
KEEP = 0.5


class DumpState(RankStateDump):
    """Each rank writes the ids it loaded and trained on per step, the scores epoch 1 selects by, and its end state."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.loaded: list[tuple[int, list[int]]] = []
        self.trained: list[list[int]] = []
        self.stale_scores: torch.Tensor | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if trainer.current_epoch == 1:
            selection = next(c for c in trainer.callbacks if isinstance(c, OnlineBatchSelection))  # type: ignore[attr-defined]
            self.stale_scores = selection.state_dict()["remembered_scores"].clone()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.loaded.append((trainer.current_epoch, batch["index"].tolist()))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module)
        self.trained.append(outputs["index"].tolist())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, CausalLMFineTuner)
        selection = next(c for c in trainer.callbacks if isinstance(c, OnlineBatchSelection))  # type: ignore[attr-defined]
        state = selection.state_dict()
        self.save(
            trainer,
            {
                "world_size": trainer.world_size,
                "batches": self.batches,
                "loaded": self.loaded,
                "trained": self.trained,
                "stale_scores": self.stale_scores,
                "remembered": state["remembered_scores"],
                "totals": state["totals"],
                "metrics": selection.epoch_metrics,
                "parameters": torch.cat([p.detach().flatten() for p in pl_module.parameters()]),
                "tokens_seen": pl_module.tokens_seen,
                "scoring_tokens_seen": pl_module.scoring_tokens_seen,
            },
        )


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("llm_sequence_ddp")
    tokenizer = ensure_pad_token(tiny_tokenizer())
    module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, lr=1e-2, max_new_tokens=0, hf_export=False)
    data = InstructionDataModule(tokenizer=tokenizer, train_size=TRAIN_SIZE, eval_size=0, batch_size=BATCH)
    trainer = make_trainer(
        max_epochs=EPOCHS,
        callbacks=[OnlineBatchSelection(keep=KEEP, method="top_k", rescore_every=2), DumpState(str(directory))],
        strategy="ddp_spawn",
        devices=WORLD_SIZE,
        reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(module, datamodule=data)
    return [torch.load(directory / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


@pytest.mark.slow
def test_ranks_agree_on_scores_counters_and_weights(ranks: list[dict[str, Any]]) -> None:
    rank0, rank1 = ranks
    assert rank0["world_size"] == rank1["world_size"] == WORLD_SIZE
    assert rank0["batches"] == rank1["batches"] == [4, 4, 4]  # 14 visits per rank: 4 batches, the stale ones of 2
    assert torch.equal(rank0["parameters"], rank1["parameters"])
    assert torch.equal(rank0["stale_scores"], rank1["stale_scores"])  # merged over the ranks after epoch 0
    assert torch.equal(rank0["remembered"], rank1["remembered"])
    assert rank0["totals"] == rank1["totals"]
    assert rank0["metrics"] == rank1["metrics"]
    assert rank0["tokens_seen"] == rank1["tokens_seen"] > 0
    assert rank0["scoring_tokens_seen"] == rank1["scoring_tokens_seen"] > 0
    trained = sum(len(ids) for rank in ranks for ids in rank["trained"])
    assert rank0["metrics"]["backward_passes"] == trained  # the summed counter is both ranks' kept sequences
    assert rank0["metrics"]["scoring_forwards"] == 2 * 28  # epochs 0 and 2, 27 padded to 28; epoch 1 scored none
    assert bool(rank0["stale_scores"][:TRAIN_SIZE].isfinite().all())  # every id scored in epoch 0, on some rank


@pytest.mark.slow
def test_each_rank_loaded_the_top_half_of_its_batches_by_the_shared_scores(ranks: list[dict[str, Any]]) -> None:
    for rank, state in enumerate(ranks):
        sampler = CurriculumSampler(
            range(TRAIN_SIZE), FullData(), num_epochs=EPOCHS, num_replicas=WORLD_SIZE, rank=rank
        )
        sampler.set_epoch(1)
        shard = [index for index, _ in sampler]
        scores = state["stale_scores"]
        expected = []
        for start in range(0, len(shard), BATCH):
            batch = shard[start : start + BATCH]
            order = torch.sort(scores[batch], descending=True, stable=True).indices[: kept_count(len(batch), KEEP)]
            expected.append([batch[i] for i in sorted(order.tolist())])
        stale = [ids for epoch, ids in state["loaded"] if epoch == 1]
        assert stale == expected  # selected before loading: the dropped half was never loaded
        trained = state["trained"][len(expected) : 2 * len(expected)]
        assert trained == expected
        for epoch in (0, 2):  # the scoring epochs load whole batches and keep half of each
            loaded = [ids for e, ids in state["loaded"] if e == epoch]
            assert [len(ids) for ids in loaded] == [BATCH] * 3 + [2]

"""LLM recipe under DDP: two CPU processes with gloo (``ddp_spawn``), a tiny Llama, InfoBatch at a budget.

Run twice, with padded and with packed training batches (``packing``: each step's examples end to end in
rows, each keeping its own loss).

InfoBatch plans from the tracker's synced losses and reweights the kept examples, so this covers the
synced plan, the weighted token loss and the IFD pass across ranks. (The library's `Curriculum` cannot
be used with ``ddp_spawn``: its pacing closure does not pickle.)

Each rank writes what it ended with to a file (`RankStateDump`), and the test compares the ranks with each
other and with one process.
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

from lightning_curricula import TrainingDynamics  # noqa: E402
from lightning_curricula.policies import InfoBatch  # noqa: E402

WORLD_SIZE = 2
EPOCHS = 3
TRAIN_SIZE = 27  # odd: the plan is padded to an even number of visits


def data_module(tokenizer: Any, *, packing: bool = False) -> InstructionDataModule:
    policy = InfoBatch(budget=0.9, anneal=0.125)  # epochs 0 and 2 on all data, epoch 1 pruned to 19 of 27
    return InstructionDataModule(
        tokenizer=tokenizer,
        train_size=TRAIN_SIZE,
        eval_size=16,
        batch_size=4,
        eval_batch_size=4,
        policy=policy,
        packing=packing,
    )


def module(tokenizer: Any) -> CausalLMFineTuner:
    return CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, lr=1e-3, max_new_tokens=2, fit_start_scores=True)


class DumpState(RankStateDump):
    """Each rank writes its tables, example scores, parameters and batch counts at the end of training."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, CausalLMFineTuner)
        dynamics = next(c for c in trainer.callbacks if isinstance(c, TrainingDynamics))
        state = {
            "world_size": trainer.world_size,
            "signals": dynamics.signals(),
            "example_scores": pl_module.example_scores,
            "parameters": torch.cat([p.detach().flatten() for p in pl_module.parameters()]),
            "batches": self.batches,
            "global_step": trainer.global_step,
            "total_steps": pl_module.total_steps,
            "tokens_seen": pl_module.tokens_seen,
            "val_hard_loss": float(trainer.callback_metrics["val/hard/loss"]),
        }
        self.save(trainer, state)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return ensure_pad_token(tiny_tokenizer())


@pytest.fixture(scope="module", params=[False, True], ids=["padded", "packed"])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> list[dict]:
    directory = tmp_path_factory.mktemp("llm_ddp")
    trainer = make_trainer(
        max_epochs=EPOCHS,
        callbacks=[TrainingDynamics(), DumpState(str(directory))],
        strategy="ddp_spawn",
        devices=WORLD_SIZE,
        reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(module(tokenizer), datamodule=data_module(tokenizer, packing=request.param))
    return [torch.load(directory / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


@pytest.mark.slow
def test_ranks_agree_on_tables_scores_and_weights(ranks: list[dict[str, Any]]) -> None:
    rank0, rank1 = ranks
    assert rank0["world_size"] == rank1["world_size"] == WORLD_SIZE
    assert rank0["batches"] == rank1["batches"]  # equal lengths: no rank waits for the other
    for key, value in rank0["signals"].items():
        assert torch.equal(value.nan_to_num(-1.0), rank1["signals"][key].nan_to_num(-1.0)), key
    for key, value in rank0["example_scores"].items():
        assert torch.equal(value.nan_to_num(-1.0), rank1["example_scores"][key].nan_to_num(-1.0)), key
    assert torch.equal(rank0["parameters"], rank1["parameters"])
    assert rank0["tokens_seen"] == rank1["tokens_seen"] > 0
    assert rank0["val_hard_loss"] == rank1["val_hard_loss"]


@pytest.mark.slow
def test_plan_is_sharded_and_sizes_the_schedule(ranks: list[dict[str, Any]]) -> None:
    signals = ranks[0]["signals"]
    assert signals["epochs_seen"].tolist().count(0) == 0  # epoch 0 trains on everything
    assert int(signals["visits"].sum()) == 28 + 20 + 28  # 27 padded to 28; round(0.9 * 81) - 54 = 19 padded to 20
    assert ranks[0]["batches"] == [4, 3, 4]  # 14, 10 and 14 visits per rank, batches of 4
    assert ranks[0]["global_step"] == ranks[0]["total_steps"] == 11


@pytest.mark.slow
def test_ifd_is_the_single_process_value(ranks: list[dict[str, Any]], tokenizer: Any) -> None:
    data = data_module(tokenizer)
    data.setup("fit")
    single = module(tokenizer).compute_example_scores(data.train_dataset)
    assert single["ifd"].isfinite().all()
    for key, value in single.items():  # ifd_below_1 is NaN where IFD >= 1, on every rank alike
        assert torch.allclose(ranks[0]["example_scores"][key], value, atol=1e-5, equal_nan=True), key

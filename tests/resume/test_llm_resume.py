"""LLM recipe: crash at epoch 2, resume from the epoch-1 checkpoint, end like the uninterrupted run.

A curriculum by loss (its plans depend on the tracker's tables), IFD at fit start (restored from the
checkpoint, not recomputed), and the warm-up + cosine schedule sized from the plan; with padded and with
packed training batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import CrashAt, SimulatedCrash, make_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")

from lightning_curricula.recipes.llm.data import ensure_pad_token  # noqa: E402
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.model import tiny_llama, tiny_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.module import CausalLMFineTuner  # noqa: E402

from lightning_curricula import TrainingDynamics  # noqa: E402
from lightning_curricula.policies import Curriculum  # noqa: E402

EPOCHS = 3


class CountingFineTuner(CausalLMFineTuner):
    """Counts the examples it scores, to show that a resumed run reads the scores from the checkpoint."""

    scored = 0

    def compute_example_scores(self, dataset: Any, ids: Any = None) -> dict[str, torch.Tensor]:
        missing = int(self.example_scores["ifd"].isnan().sum()) if self.example_scores else len(dataset)
        CountingFineTuner.scored += missing
        return super().compute_example_scores(dataset, ids)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return ensure_pad_token(tiny_tokenizer())


def run(
    tokenizer: Any, root: Path, *, packing: bool, crash: bool = False, ckpt_path: Path | None = None
) -> tuple[Any, ...]:
    model = CountingFineTuner(tiny_llama(len(tokenizer)), tokenizer, lr=1e-3, max_new_tokens=0, fit_start_scores=True)
    data = InstructionDataModule(
        tokenizer=tokenizer,
        train_size=24,
        eval_size=0,
        batch_size=8,
        policy=Curriculum("loss", start=0.5, saturation=1.0, warmup_epochs=1),
        packing=packing,
    )
    dynamics = TrainingDynamics()
    checkpoints = ModelCheckpoint(dirpath=root, filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    callbacks: list[Callback] = [dynamics, checkpoints, *([CrashAt(2)] if crash else [])]
    trainer = make_trainer(
        root, max_epochs=EPOCHS, callbacks=callbacks, enable_checkpointing=True, reload_dataloaders_every_n_epochs=1
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model, dynamics, trainer


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_resumed_run_equals_the_uninterrupted_one(tokenizer: Any, tmp_path: Path, packing: bool) -> None:
    straight, straight_dynamics, straight_trainer = run(tokenizer, tmp_path / "straight", packing=packing)
    with pytest.raises(SimulatedCrash):
        run(tokenizer, tmp_path / "crashed", packing=packing, crash=True)
    CountingFineTuner.scored = 0
    resumed, resumed_dynamics, resumed_trainer = run(
        tokenizer, tmp_path / "crashed", packing=packing, ckpt_path=tmp_path / "crashed" / "epoch=1.ckpt"
    )
    assert CountingFineTuner.scored == 0  # the IFD came back with the checkpoint
    assert resumed_trainer.global_step == straight_trainer.global_step
    assert resumed.total_steps == straight.total_steps == straight_trainer.global_step
    assert resumed.tokens_seen == straight.tokens_seen
    for key, value in straight_dynamics.signals().items():
        assert torch.equal(resumed_dynamics.signals()[key].nan_to_num(-1.0), value.nan_to_num(-1.0)), key
    for key, value in straight.example_scores.items():
        assert torch.equal(resumed.example_scores[key].nan_to_num(-1.0), value.nan_to_num(-1.0)), key
    for (name, expected), (_, actual) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(actual, expected), name
    straight_lr = straight_trainer.optimizers[0].param_groups[0]["lr"]
    assert resumed_trainer.optimizers[0].param_groups[0]["lr"] == straight_lr

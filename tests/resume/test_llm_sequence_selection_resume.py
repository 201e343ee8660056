"""The LLM recipe's Stale-SB selecting before loading: crash in a stale epoch, resume, end like the uninterrupted run.

Selective Backprop's percentile rule with ``unbiased=True`` (its inclusion-probability weights and the fixed token
count they need), scoring in epochs 0 and 2 of 4, and RHO-LOSS's irreducible losses (kept in the checkpoint). The
resumed run first builds a loader for a stale epoch, which selects before loading: it loads the same kept rows with
the same weights and ends with the same parameters, remembered scores, counters and token counts.
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
from lightning_curricula.recipes.llm.module import CausalLMFineTuner, loss_tokens_per_sequence  # noqa: E402

from lightning_curricula import OnlineBatchSelection, ReferenceLosses, TrainingDynamics  # noqa: E402

EPOCHS = 4
TRAIN_SIZE = 20
BATCH = 8  # batches of 8, 8, 4: the stale epochs load 4, 4 and 2 rows


class Trained(Callback):
    """The ids, loaded and trained on, and the loss of every step."""

    def __init__(self) -> None:
        self.loaded: list[list[int]] = []
        self.trained: list[list[int]] = []
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.loaded.append(batch["index"].tolist())
        self.trained.append(outputs["index"].tolist())
        self.losses.append(outputs["loss"].detach().clone())


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return ensure_pad_token(tiny_tokenizer())


def run(
    tokenizer: Any, root: Path, reference: Path | None, *, crash: int | None = None, ckpt_path: Path | None = None
) -> tuple[CausalLMFineTuner, OnlineBatchSelection, Trained, Any]:
    options = {} if reference is None else {"irreducible_losses": str(reference)}
    model = CausalLMFineTuner(
        tiny_llama(len(tokenizer)), tokenizer, lr=1e-2, max_new_tokens=0, hf_export=False, **options
    )
    data = InstructionDataModule(tokenizer=tokenizer, train_size=TRAIN_SIZE, eval_size=0, batch_size=BATCH)
    selection = OnlineBatchSelection(keep=0.5, method="percentile", beta=2.0, unbiased=True, seed=3, rescore_every=2)
    trained = Trained()
    checkpoints = ModelCheckpoint(dirpath=root, filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    callbacks: list[Callback] = [TrainingDynamics(), selection, trained, checkpoints]
    callbacks += [] if crash is None else [CrashAt(crash)]
    trainer = make_trainer(
        root, max_epochs=EPOCHS, callbacks=callbacks, enable_checkpointing=True, reload_dataloaders_every_n_epochs=1
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model, selection, trained, trainer


@pytest.mark.parametrize("crash", [1, 3])
@pytest.mark.parametrize("rho_loss", [False, True], ids=["selective_backprop", "rho_loss"])
def test_crash_in_a_stale_epoch_and_resume_equals_the_uninterrupted_run(
    tokenizer: Any, tmp_path: Path, crash: int, rho_loss: bool
) -> None:
    reference = None
    if rho_loss:
        reference = tmp_path / "irreducible.pt"
        ReferenceLosses(torch.rand(TRAIN_SIZE, generator=torch.Generator().manual_seed(1)) * 3).save(reference)
    straight, straight_selection, straight_steps, straight_trainer = run(tokenizer, tmp_path / "straight", reference)
    with pytest.raises(SimulatedCrash):
        run(tokenizer, tmp_path / "crashed", reference, crash=crash)
    checkpoint = tmp_path / "crashed" / f"epoch={crash - 1}.ckpt"
    resumed, selection, steps, trainer = run(tokenizer, tmp_path / "crashed", reference, ckpt_path=checkpoint)

    done = 3 * crash
    assert [len(ids) for ids in steps.loaded[:3]] == [4, 4, 2]  # the resumed stale epoch selected before loading
    assert steps.loaded == straight_steps.loaded[done:]
    assert steps.trained == straight_steps.trained[done:]
    per_sequence = loss_tokens_per_sequence(trainer.datamodule.train_dataset["labels"])
    assert resumed.token_count == straight.token_count == BATCH * per_sequence  # the batch before selection
    for got, want in zip(steps.losses, straight_steps.losses[done:], strict=True):
        assert torch.equal(got, want)
    for (name, expected), (_, actual) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(actual, expected), name
    assert selection.calls == straight_selection.calls == EPOCHS * 3
    assert selection.state_dict()["totals"] == straight_selection.state_dict()["totals"]
    assert torch.equal(
        selection.state_dict()["remembered_scores"], straight_selection.state_dict()["remembered_scores"]
    )
    assert resumed.tokens_seen == straight.tokens_seen
    assert resumed.scoring_tokens_seen == straight.scoring_tokens_seen
    assert trainer.optimizers[0].param_groups[0]["lr"] == straight_trainer.optimizers[0].param_groups[0]["lr"]
    if rho_loss:
        assert resumed.irreducible is not None
        assert straight.irreducible is not None
        assert torch.equal(resumed.irreducible.losses, straight.irreducible.losses)

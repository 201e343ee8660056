"""The LLM recipe on users' own files: what runs are judged by, text rows, IFD refusals, per-example scores."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")
datasets = pytest.importorskip("datasets")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from lightning_curricula.recipes.interface import MissingScoresError  # noqa: E402
from lightning_curricula.recipes.llm.data import ensure_pad_token  # noqa: E402
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.model import TINY, tiny_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.module import CausalLMFineTuner  # noqa: E402
from lightning_curricula.recipes.llm.report import DifficultyReport  # noqa: E402

from lightning_curricula import TrainingDynamics  # noqa: E402
from lightning_curricula.policies import ScoreCurriculum  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return ensure_pad_token(tiny_tokenizer())


def write_rows(path: Path, shape: str, count: int = 40) -> Path:
    with path.open("w") as file:
        for i in range(count):
            a, b = i % 7 + 1, i // 7 + 1
            if shape == "text":
                row = {"text": f"{a} plus {b} makes {a + b}."}
            else:
                row = {"question": f"What is {a} + {b}?", "answer": str(a + b)}
            file.write(json.dumps(row) + "\n")
    return path


def data(source: str, tokenizer, **options) -> InstructionDataModule:
    module = InstructionDataModule(source, tokenizer, **{"train_size": 16, "eval_size": 8, "batch_size": 8, **options})
    module.setup("fit")
    return module


def trainer(tmp_path: Path, *callbacks) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        callbacks=[TrainingDynamics(), *callbacks],
        reload_dataloaders_every_n_epochs=1,
        logger=TensorBoardLogger(str(tmp_path), name="llm"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def test_what_runs_are_judged_by_follows_the_splits_and_the_grading(tmp_path, tokenizer):
    generated = data("reasoning_gym:basic_arithmetic", tokenizer).monitored_metrics()
    assert (generated.metric, generated.test_metric, generated.kind) == (
        "val/hard/accuracy",
        "test/hard/accuracy",
        "accuracy",
    )
    assert generated.extras == {"test easy acc (%)": "test/easy/accuracy", "test hard loss": "test/hard/loss"}
    rows = data(str(write_rows(tmp_path / "qa.jsonl", "qa")), tokenizer)
    assert rows.val_split_names == ["heldout"]
    heldout = rows.monitored_metrics()
    assert (heldout.metric, heldout.test_metric, heldout.higher_is_better) == (
        "val/heldout/accuracy",
        "test/heldout/accuracy",
        True,
    )
    assert heldout.recorded == ("val/heldout/loss",)
    silent = rows.monitored_metrics(model=SimpleNamespace(max_new_tokens=0))  # generates nothing: nothing to grade
    assert (silent.metric, silent.kind) == ("val/heldout/loss", "loss")
    assert "the model generates no answers" in silent.note
    text = data(str(write_rows(tmp_path / "text.jsonl", "text")), tokenizer)
    assert text.data_shape == "text"
    assert text.scorer is None
    judged = text.monitored_metrics()
    assert (judged.metric, judged.test_metric, judged.higher_is_better) == (
        "val/heldout/loss",
        "test/heldout/loss",
        False,
    )
    with pytest.raises(ValueError, match="eval_size > 0"):
        data(str(tmp_path / "qa.jsonl"), tokenizer, eval_size=0).monitored_metrics()


def test_text_rows_train_and_are_judged_by_held_out_loss(tmp_path, tokenizer):
    module = CausalLMFineTuner(TINY, tokenizer, max_new_tokens=4)
    rows = data(str(write_rows(tmp_path / "text.jsonl", "text")), tokenizer)
    fit = trainer(tmp_path, DifficultyReport())
    fit.fit(module, datamodule=rows)
    logged = fit.callback_metrics
    assert math.isfinite(float(logged["val/heldout/loss"]))
    assert not any(name.endswith("accuracy") for name in logged)  # nothing generated: text has no answers
    fit.test(module, datamodule=rows, verbose=False)
    assert math.isfinite(float(fit.callback_metrics["test/heldout/loss"]))


def test_per_example_scores_are_written_for_data_without_a_difficulty_column(tmp_path, tokenizer):
    module = CausalLMFineTuner(TINY, tokenizer, max_new_tokens=2)
    rows = data(str(write_rows(tmp_path / "qa.jsonl", "qa")), tokenizer)
    report = DifficultyReport()
    fit = trainer(tmp_path, report)
    fit.fit(module, datamodule=rows)
    assert report.correlations == {}
    exported = datasets.Dataset.from_parquet(str(Path(fit.logger.log_dir) / "example_scores.parquet"))
    assert exported["index"] == list(range(16))
    assert exported["source_index"] == list(rows.train_dataset["source_index"])
    assert all(math.isfinite(loss) for loss in exported["loss"])  # every example trained once


def test_ifd_on_text_rows_is_refused_before_training(tmp_path, tokenizer):
    rows = data(str(write_rows(tmp_path / "text.jsonl", "text")), tokenizer)
    with pytest.raises(MissingScoresError, match="text rows .* have no prompt, so no IFD"):
        data(str(tmp_path / "text.jsonl"), tokenizer, policy=ScoreCurriculum("ifd", keep=0.5)).bound_policy()
    with pytest.raises(ValueError, match="fit_start_scores=True computes IFD"):
        trainer(tmp_path).fit(CausalLMFineTuner(TINY, tokenizer, fit_start_scores=True), datamodule=rows)
    qa = data(str(write_rows(tmp_path / "qa.jsonl", "qa")), tokenizer, policy=ScoreCurriculum("difficulty", keep=0.5))
    with pytest.raises(MissingScoresError, match="ranks by 'difficulty', which is not a column"):
        qa.bound_policy()

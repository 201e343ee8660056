"""The LLM testbed in the recipe: per-family splits, the families' mean, what runs are judged by, compare on it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")
datasets = pytest.importorskip("datasets")

from lightning_curricula.recipes.compare import main as compare_main  # noqa: E402
from lightning_curricula.recipes.compare.settings import check_llm_dataset  # noqa: E402
from lightning_curricula.recipes.llm.cli import LLMRecipeCLI  # noqa: E402
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.metrics import family_means  # noqa: E402
from lightning_curricula.recipes.llm.model import tiny_tokenizer  # noqa: E402

FAMILIES = ["chain_sum", "gcd", "leg_counting"]


@pytest.fixture(scope="module")
def testbed() -> InstructionDataModule:
    module = InstructionDataModule(f"testbed:{','.join(FAMILIES)}", tiny_tokenizer(), train_size=30, eval_size=6)
    module.setup("fit")
    return module


def test_the_testbed_defaults_to_2000_training_and_150_held_out_examples_per_family() -> None:
    module = InstructionDataModule("testbed", tiny_tokenizer())
    assert len(module.families) == 8
    assert (module.train_size, module.eval_size) == (2000, 150)
    other = InstructionDataModule("reasoning_gym:basic_arithmetic", tiny_tokenizer())
    assert (other.families, other.train_size, other.eval_size) == ([], 1000, 256)
    with pytest.raises(ValueError, match="Unknown testbed families \\['sudoku'\\]; valid: chain_sum"):
        InstructionDataModule("testbed:gcd,sudoku", tiny_tokenizer())


def test_held_out_splits_are_one_per_family_and_disjoint_from_training(testbed: InstructionDataModule) -> None:
    assert testbed.val_split_names == testbed.test_split_names == FAMILIES
    train = testbed.train_dataset
    assert train is not None
    assert len(train) == 30
    assert sorted(set(train["family"])) == sorted(FAMILIES)
    for family in FAMILIES:
        validation, test = testbed.val_datasets[family], testbed.test_datasets[family]
        assert (len(validation), len(test)) == (6, 6)
        assert set(validation["family"]) == set(test["family"]) == {family}
        prompts = {
            name: set(rows["prompt"])
            for name, rows in (
                ("train", train.filter(lambda row, f=family: row["family"] == f)),
                ("validation", validation),
                ("test", test),
            )
        }
        assert len(prompts["validation"]) == len(prompts["test"]) == 6  # no question twice in a split
        assert not prompts["train"] & prompts["validation"]
        assert not prompts["train"] & prompts["test"]
        assert not prompts["validation"] & prompts["test"]
    assert testbed.split_sizes() == (30, 18, 18)


def test_runs_on_the_testbed_are_judged_by_the_mean_accuracy_over_families(testbed: InstructionDataModule) -> None:
    monitored = testbed.monitored_metrics()
    assert (monitored.metric, monitored.test_metric, monitored.kind) == (
        "val/families/accuracy",
        "test/families/accuracy",
        "accuracy",
    )
    assert {f"val/{family}/accuracy" for family in FAMILIES} <= set(monitored.recorded)
    assert monitored.extras["test gcd acc (%)"] == "test/gcd/accuracy"
    silent = torch.nn.Module()
    silent.max_new_tokens = 0  # type: ignore[assignment]
    assert testbed.monitored_metrics(model=silent).metric == "val/families/loss"  # type: ignore[arg-type]


def test_the_families_mean_leaves_out_a_metric_some_family_lacks() -> None:
    metrics = {"val/a/accuracy": 0.25, "val/b/accuracy": 0.75, "val/a/loss": 2.0}
    assert family_means(metrics, "val", ["a", "b"]) == {"val/families/accuracy": 0.5}
    assert family_means(metrics, "val", []) == {}


def test_fit_logs_each_family_and_their_mean_and_exports_the_family_column(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    args = [
        "fit",
        "--model.model", "tiny-random-llama",
        "--model.max_new_tokens", "2",
        "--model.hf_export", "false",
        "--data.dataset", "testbed:chain_sum,gcd",
        "--data.train_size", "16",
        "--data.eval_size", "4",
        "--data.batch_size", "4",
        "--data.group_by_length", "true",
        "--trainer.max_epochs", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]  # fmt: skip
    cli = LLMRecipeCLI(args=args)
    metrics = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    for measure in ("accuracy", "loss"):
        per_family = [metrics[f"val/{family}/{measure}"] for family in ("chain_sum", "gcd")]
        torch.testing.assert_close(metrics[f"val/families/{measure}"], sum(per_family) / 2)
    assert cli.history.monitor == "val/families/accuracy"
    assert len(cli.history.records) == 2
    assert cli.history.records[-1]["val/families/accuracy"] == metrics["val/families/accuracy"]
    scores = datasets.Dataset.from_parquet(str(Path(cli.trainer.log_dir) / "example_scores.parquet"))
    assert sorted(set(scores["family"])) == ["chain_sum", "gcd"]
    assert scores["family"] == list(cli.datamodule.train_dataset["family"])
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    tested = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    mean = (tested["test/chain_sum/loss"] + tested["test/gcd/loss"]) / 2
    torch.testing.assert_close(tested["test/families/loss"], mean)
    assert "test/families/accuracy" in tested


def test_compare_runs_on_the_testbed_and_reports_the_families_mean(tmp_path: Path) -> None:
    check_llm_dataset("testbed")
    with pytest.raises(ValueError, match="Unknown testbed families"):
        check_llm_dataset("testbed:nope")
    output = tmp_path / "compare"
    args = ["compare", "--recipe", "llm", "--dataset", "testbed:chain_sum,gcd", "--policies", "full"]
    assert compare_main([*args, "--max-epochs", "1", "--fast-dev", "--output", str(output)]) == 0
    stored = json.loads((output / "results" / "full" / "seed_0.json").read_text())
    assert stored["monitored"]["metric"] == "val/families/accuracy"
    assert stored["final_acc"] == stored["epochs"][-1]["val/families/accuracy"]
    assert math.isfinite(stored["test_acc"])
    titles = [cell.strip() for cell in (output / "summary.md").read_text().splitlines()[0].split("|")[1:-1]]
    assert titles[2:5] == ["test families acc (%)", "final val families acc (%)", "best val families acc (%)"]
    assert "test gcd acc (%)" in titles

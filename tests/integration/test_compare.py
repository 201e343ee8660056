"""`lightning-curricula compare` on tiny data: outputs, TensorBoard logs, resuming, refusals and bad names."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from lightning_curricula.recipes import compare
from lightning_curricula.recipes.compare import RunResult, accuracy_figure, main, report, runner, summarize
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

ARGS = ["--policies", "full", "curriculum", "--seeds", "0", "--max-epochs", "3", "--fast-dev"]
# --fast-dev trains on 256 images (25 more held out for validation); the curriculum's second epoch takes the
# easiest ceil(0.7 * 256), its last all.
PASSES = {"full": [256, 512, 768], "curriculum": [256, 256 + 180, 256 + 180 + 256]}


def run(output: Path, *args: str) -> int:
    return main(["compare", *args, "--output", str(output)])


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("compare") / "out"
    assert run(output, *ARGS) == 0
    return output


def results(output: Path) -> dict[str, dict[str, Any]]:
    return {policy: json.loads((output / "results" / policy / "seed_0.json").read_text()) for policy in PASSES}


def test_summary_table_and_csv(comparison: Path) -> None:
    markdown = (comparison / "summary.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[0].startswith("| policy | seeds | test acc (%) | final val acc (%) | best val acc (%) | sample passes")
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]] for line in table[1:]}
    assert list(rows) == ["full", "curriculum"]
    for cells in rows.values():
        seeds, test, final, best, passes, passes_ratio, wall, wall_ratio, train_ratio, time_to_full, test_loss = cells
        assert seeds == "1"
        assert 0.0 <= float(test) <= 100.0
        assert 0.0 <= float(final) <= float(best) <= 100.0
        assert float(test_loss) > 0
        assert float(passes_ratio) <= 1.0
        assert float(wall) > 0
        assert float(wall_ratio) > 0
        assert float(train_ratio) > 0
        assert time_to_full == "n/a" or float(time_to_full) > 0
    assert float(rows["full"][9]) <= 1.0  # full data reaches its own final accuracy by its last epoch
    assert rows["full"][4] == "768"
    assert rows["full"][5] == "1.00"
    assert rows["curriculum"][4] == "692"
    assert "256 training, 25 validation and 128 test examples" in markdown

    with (comparison / "summary.csv").open() as file:
        summary = {row["policy"]: row for row in csv.DictReader(file)}
    assert list(summary) == ["full", "curriculum"]
    stored = results(comparison)
    for policy, row in summary.items():
        assert float(row["test_acc_mean"]) == pytest.approx(stored[policy]["test_acc"])
        assert float(row["final_acc_mean"]) == pytest.approx(stored[policy]["final_acc"])
        assert float(row["best_acc_mean"]) == pytest.approx(stored[policy]["best_acc"])
        assert math.isnan(float(row["final_acc_std"]))  # one seed
        assert float(row["sample_passes"]) == PASSES[policy][-1]
        assert float(row["wall_seconds"]) == pytest.approx(stored[policy]["wall_seconds"])
        assert 0 < stored[policy]["train_seconds"] < stored[policy]["wall_seconds"]  # evaluation left out
        for epoch in stored[policy]["epochs"]:
            assert 0 < epoch["train_seconds"] < epoch["seconds"]
    assert float(summary["curriculum"]["passes_ratio"]) == pytest.approx(692 / 768)


def test_tensorboard_logs_accuracy_by_passes_and_hparams(comparison: Path) -> None:
    stored = results(comparison)
    for policy, passes in PASSES.items():
        log_dir = comparison / "tensorboard" / policy / "seed_0"
        assert list(log_dir.glob("events.out.tfevents.*"))
        events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"val/acc", "val/loss", "test/acc", "train/loss", "dynamics/sample_passes", "hparams/test_acc"} <= tags
        by_passes = events.Scalars("val/acc_by_sample_passes")
        assert [event.step for event in by_passes] == passes
        expected = [epoch["val/acc"] for epoch in stored[policy]["epochs"]]
        assert [event.value for event in by_passes] == pytest.approx(expected)
        assert events.Scalars("hparams/test_acc")[-1].value == pytest.approx(stored[policy]["test_acc"])
        assert events.Scalars("hparams/final_val_acc")[-1].value == pytest.approx(stored[policy]["final_acc"])
        start = events.summary_metadata["_hparams_/session_start_info"].plugin_data.content
        hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert hparams["policy"].string_value == policy
        assert hparams["seed"].number_value == 0
        assert hparams["policy_class"].string_value == ("FullData" if policy == "full" else "Curriculum")


def test_figure_plots_accuracy_against_passes(comparison: Path) -> None:
    png = (comparison / "accuracy_vs_passes.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    assert imread(str(comparison / "accuracy_vs_passes.png")).shape[:2] == (540, 840)  # 7 x 4.5 in at 120 dpi
    stored = [RunResult(**result) for result in results(comparison).values()]
    figure = accuracy_figure(stored, ["full", "curriculum"])
    axes = figure.axes[0]
    curves = {container.get_label(): container.lines[0] for container in axes.containers}  # errorbar containers
    assert list(curves) == ["full", "curriculum"]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["full", "curriculum"]
    for result in stored:
        x, y = curves[result.policy].get_data()
        assert list(x) == pytest.approx([p / 256 for p in PASSES[result.policy]])
        assert list(y) == pytest.approx([100 * epoch["val/acc"] for epoch in result.epochs])
    assert "sample passes" in axes.get_xlabel()


def test_second_invocation_skips_finished_runs(comparison: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "_run_one", must_not_run)
    monkeypatch.setattr(runner, "_preflight", must_not_run)
    before = {path: path.stat().st_mtime_ns for path in (comparison / "results").rglob("*.json")}
    assert run(comparison, *ARGS) == 0
    assert {path: path.stat().st_mtime_ns for path in (comparison / "results").rglob("*.json")} == before


def test_more_seeds_extend_the_comparison(comparison: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "extended"
    shutil.copytree(comparison, output)
    trained = []

    def fake_run(options: compare.CompareOptions, policy: str, seed: int, progress: Any, position: int) -> RunResult:
        trained.append((policy, seed))
        original = results(output)[policy]
        return RunResult(**{**original, "seed": seed, "final_acc": original["final_acc"] + 0.1})

    monkeypatch.setattr(runner, "_run_one", fake_run)
    monkeypatch.setattr(runner, "_preflight", lambda options, policies: None)
    monkeypatch.setattr(runner, "_warm_up", lambda options, policy: 0.0)
    assert run(output, *ARGS[:3], "--seeds", "0", "1", *ARGS[5:]) == 0
    assert trained == [("curriculum", 1), ("full", 1)]  # seed 1 takes the policies in the rotated order
    assert json.loads((output / "comparison.json").read_text())["seeds"] == [0, 1]
    assert "± 7.07" in (output / "summary.md").read_text()  # stdev of (a, a + 0.1) in percent


def test_refuses_a_different_comparison(comparison: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(comparison, *ARGS[:-2], "4", "--fast-dev") == 2
    error = capsys.readouterr().err
    assert "holds a different comparison" in error
    assert "max_epochs: stored 3, now 4" in error
    assert "another --output" in error
    assert run(comparison, *ARGS, "--dataset", "digits") == 2
    assert "dataset: stored 'embedded', now 'digits'" in capsys.readouterr().err
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    assert run(unrelated, *ARGS) == 2
    assert "holds no comparison.json" in capsys.readouterr().err


def test_refuses_a_policy_that_cannot_run_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "impossible"
    assert run(output, "--policies", "full", "infobatch", "--max-epochs", "1", "--fast-dev") == 2
    assert "policy 'infobatch' cannot run with --max-epochs 1" in capsys.readouterr().err
    assert not (output / "results").exists()
    assert not (output / "comparison.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "full", "nonsense"], "unknown policies ['nonsense'] for the vision recipe; valid: anti_c"),
        (["--recipe", "llm", "--policies", "static_el2n"], "unknown policies ['static_el2n'] for the llm recipe"),
        (["--recipe", "llm", "--dataset", "gsm8k"], "Unknown dataset 'gsm8k'; valid: reasoning_gym:<task>"),
        (["--recipe", "audio"], "argument --recipe: invalid choice: 'audio'"),
        (["--dataset", "cifar10"], "Unknown dataset 'cifar10'; valid: embedded, fashion_mnist, digits"),
        (["--max-epochs", "0"], "--max-epochs must be at least 1"),
    ],
)
def test_bad_arguments_fail_at_once(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def result(policy: str, seed: int, final: float, passes: int, wall: float) -> RunResult:
    return RunResult(policy, seed, final, final, passes, wall, 100, 10, "CPU", [], train_seconds=wall - 4.0)


def test_summarize_ratios_and_spread() -> None:
    runs = [result("full", 0, 0.9, 600, 10.0), result("full", 1, 0.8, 600, 14.0), result("random", 0, 0.7, 300, 6.0)]
    full, random = summarize(runs, ["full", "random"])
    assert (full.final_acc_mean, full.final_acc_std) == pytest.approx((0.85, math.sqrt(0.005)))
    assert (random.passes_ratio, random.wall_ratio) == pytest.approx((0.5, 0.5))
    assert random.train_ratio == pytest.approx(2.0 / 8.0)  # evaluation (4 s per run here) left out
    assert math.isnan(random.final_acc_std)
    (alone,) = summarize(runs[2:], ["random"])
    assert math.isnan(alone.passes_ratio)
    assert math.isnan(alone.wall_ratio)


def test_summarize_charges_scoring_forwards_and_times_the_reach_of_full_accuracy() -> None:
    def epochs(accuracies: list[float], seconds_per_epoch: float) -> list[dict[str, float]]:
        return [{"val/acc": acc, "train_seconds": seconds_per_epoch * (i + 1)} for i, acc in enumerate(accuracies)]

    full = RunResult("full", 0, 0.9, 0.9, 600, 10.0, 100, 10, "CPU", epochs([0.5, 0.8, 0.9], 2.0), train_seconds=6.0)
    step = RunResult(
        "selective_backprop",
        0,
        0.92,
        0.92,
        300,
        8.0,
        100,
        10,
        "CPU",
        epochs([0.6, 0.9, 0.92], 1.5),
        train_seconds=4.5,
        scoring_forwards=600,
    )
    never = RunResult("random", 0, 0.85, 0.85, 300, 5.0, 100, 10, "CPU", epochs([0.5, 0.85], 2.0), train_seconds=4.0)
    rows = {row.policy: row for row in summarize([full, step, never], ["full", "selective_backprop", "random"])}
    assert rows["selective_backprop"].scoring_ratio == pytest.approx(1.0)  # every example scored once per epoch
    assert rows["full"].scoring_ratio == 0.0
    assert rows["selective_backprop"].time_to_full_ratio == pytest.approx(3.0 / 6.0)  # 0.9 reached after 2 epochs
    assert rows["full"].time_to_full_ratio == pytest.approx(1.0)
    assert math.isnan(rows["random"].time_to_full_ratio)  # never reaches 0.9
    recipe = compare.RECIPES["vision"]
    table = report.markdown_table(list(rows.values()), recipe, "")
    header, _, full_row, step_row, random_row = [line for line in table.splitlines() if line.startswith("|")]
    titles = [cell.strip() for cell in header.split("|")[1:-1]]
    assert "scoring forwards / full" in titles
    assert [cell.strip() for cell in step_row.split("|")[1:-1]][titles.index("scoring forwards / full")] == "1.00"
    assert [cell.strip() for cell in random_row.split("|")[1:-1]][-1] == "n/a"


def test_time_to_full_accuracy_targets_what_every_full_data_seed_reaches() -> None:
    def run(policy: str, seed: int, accuracies: list[float]) -> RunResult:
        epochs = [{"val/acc": acc, "train_seconds": 2.0 * (i + 1)} for i, acc in enumerate(accuracies)]
        return RunResult(
            policy, seed, accuracies[-1], max(accuracies), 300, 8.0, 100, 10, "CPU", epochs, train_seconds=6.0
        )

    runs = [run("full", 0, [0.7, 0.8, 0.90]), run("full", 1, [0.7, 0.8, 0.88]), run("bandit", 0, [0.8, 0.89, 0.9])]
    full, bandit = summarize(runs, ["full", "bandit"])
    assert full.time_to_full_ratio == pytest.approx(1.0)  # the target is 0.88: each full seed reaches it at its end
    assert bandit.time_to_full_ratio == pytest.approx(4.0 / 6.0)


def test_llm_recipe_comparison_reports_hard_accuracy_tokens_and_rank_correlation(tmp_path: Path) -> None:
    output = tmp_path / "llm"
    policies = ("full", "curriculum_difficulty", "selective_backprop")
    assert run(output, "--recipe", "llm", "--policies", *policies, "--max-epochs", "3", "--fast-dev") == 0
    stored = {policy: json.loads((output / "results" / policy / "seed_0.json").read_text()) for policy in policies}
    assert stored["full"]["train_examples"] == 32
    assert stored["full"]["sample_passes"] == 96
    assert stored["curriculum_difficulty"]["sample_passes"] == 32 + 20 + 32  # paced: ceil(0.625 * 32) at progress 0.5
    for result in stored.values():
        assert 0.0 <= result["final_acc"] <= result["best_acc"] <= 1.0
        assert 0.0 <= result["test_acc"] <= 1.0
        assert result["val_examples"] > 0
        assert result["test_examples"] > 0
        assert result["extras"]["train/tokens_seen"] > 0
        assert -1.0 <= result["extras"]["rank_correlation/loss_ema"] <= 1.0
        assert [epoch["val/hard/accuracy"] for epoch in result["epochs"]][-1] == result["final_acc"]
    tokens = {policy: result["extras"]["train/tokens_seen"] for policy, result in stored.items()}
    assert tokens["curriculum_difficulty"] < tokens["full"]
    scoring = {policy: result["extras"]["train/scoring_tokens_seen"] for policy, result in stored.items()}
    assert scoring["full"] == scoring["curriculum_difficulty"] == 0
    assert scoring["selective_backprop"] == tokens["full"]  # every sequence scored once per epoch, as full trains
    assert tokens["selective_backprop"] < tokens["full"]

    markdown = (output / "summary.md").read_text()
    header, _, full_row, _, selection_row = [line for line in markdown.splitlines() if line.startswith("|")][:5]
    titles = [cell.strip() for cell in header.split("|")[1:-1]]
    assert titles[2:5] == ["test hard acc (%)", "final val hard acc (%)", "best val hard acc (%)"]
    extras = ["test easy acc (%)", "test hard loss", "tokens", "scoring tokens", "ρ(loss_ema, difficulty)"]
    assert titles[-5:] == extras
    cells = [cell.strip() for cell in full_row.split("|")[1:-1]]
    assert cells[0] == "full"
    assert cells[titles.index("tokens")] == f"{stored['full']['extras']['train/tokens_seen']:,.0f}"
    assert cells[titles.index("scoring tokens")] == "0.000"
    cells = [cell.strip() for cell in selection_row.split("|")[1:-1]]
    assert cells[titles.index("scoring tokens")] == f"{scoring['selective_backprop']:,.0f}"
    assert "Recipe `llm`, dataset `reasoning_gym:basic_arithmetic` (--fast-dev)" in markdown
    with (output / "summary.csv").open() as file:
        rows = {row["policy"]: row for row in csv.DictReader(file)}
    assert float(rows["curriculum_difficulty"]["train/tokens_seen_mean"]) == pytest.approx(
        stored["curriculum_difficulty"]["extras"]["train/tokens_seen"]
    )
    events = EventAccumulator(str(output / "tensorboard" / "full" / "seed_0"), size_guidance={"scalars": 0})
    events.Reload()
    assert [event.step for event in events.Scalars("val/hard_accuracy_by_sample_passes")] == [32, 64, 96]


def test_runs_warm_up_then_take_the_policies_in_a_rotated_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = []

    def fake_run(options: compare.CompareOptions, policy: str, seed: int, progress: Any, position: int) -> RunResult:
        events.append((policy, seed, position))
        return RunResult(**{**vars(result(policy, seed, 0.5, 100, 1.0 + position)), "position": position})

    def fake_warm_up(options: compare.CompareOptions, policy: str) -> float:
        events.append(("warm-up", policy))
        return 1.5

    monkeypatch.setattr(runner, "_run_one", fake_run)
    monkeypatch.setattr(runner, "_preflight", lambda options, policies: None)
    monkeypatch.setattr(runner, "_warm_up", fake_warm_up)
    args = ["--policies", "full", "curriculum", "bandit", "--seeds", "0", "1", "2", "--fast-dev"]
    assert run(tmp_path / "order", *args) == 0
    # A machine that slows down during the comparison slows every policy alike, and none always runs first.
    assert events == [
        ("warm-up", "full"),
        ("full", 0, 0), ("curriculum", 0, 1), ("bandit", 0, 2),
        ("curriculum", 1, 3), ("bandit", 1, 4), ("full", 1, 5),
        ("bandit", 2, 6), ("full", 2, 7), ("curriculum", 2, 8),
    ]  # fmt: skip
    stored = json.loads((tmp_path / "order" / "comparison.json").read_text())
    assert stored["warmup_seconds"] == 1.5
    assert [(run["policy"], run["seed"], run["position"]) for run in stored["runs"]] == [e[:3] for e in events[1:]]
    assert [run["wall_seconds"] for run in stored["runs"]] == [1.0 + position for position in range(9)]
    # Resumed with a new seed: the stored runs' times stay, the new ones are appended.
    assert run(tmp_path / "order", *args[:4], "--seeds", "0", "1", "2", "3", "--fast-dev") == 0
    assert len(json.loads((tmp_path / "order" / "comparison.json").read_text())["runs"]) == 12


def test_a_policy_that_trains_exactly_what_full_data_trains_is_flagged(tmp_path: Path) -> None:
    options = compare.CompareOptions(
        policies=("full", "random"), max_epochs=2, fast_dev=True, output=tmp_path / "same", threads=1
    )
    (tmp_path / "same").mkdir()

    class Progress:
        def update(self, count: int) -> None: ...

    first, second = (runner._run_one(options, "full", 0, Progress(), position=i) for i in range(2))
    random = runner._run_one(options, "random", 0, Progress(), position=2)
    assert len(first.trained_digest) == 32
    assert first.trained_digest == second.trained_digest  # the same examples, weights and losses at every step
    assert random.trained_digest != first.trained_digest
    twin = RunResult(**{**vars(second), "policy": "twin"})
    rows = {row.policy: row for row in summarize([first, random, twin], ["full", "random", "twin"])}
    assert rows["twin"].same_as_full
    assert not rows["random"].same_as_full
    assert not rows["full"].same_as_full
    table = report.markdown_table(list(rows.values()), compare.RECIPES["vision"], "")
    assert "| twin (same as full) |" in table
    assert "| random |" in table


def test_every_recipe_data_module_is_a_recipe_data_module() -> None:
    from lightning_curricula.recipes.interface import RecipeDataModule
    from lightning_curricula.recipes.llm.datamodule import InstructionDataModule
    from lightning_curricula.recipes.vision.datamodule import VisionDataModule

    assert issubclass(VisionDataModule, RecipeDataModule)
    assert issubclass(InstructionDataModule, RecipeDataModule)

    class Bare:
        datamodule = object()

    with pytest.raises(TypeError, match="compare needs a RecipeDataModule"):
        runner._recipe_data(Bare(), "full")


def _user_rows(shape: str, count: int = 72) -> list[dict[str, Any]]:
    """Arithmetic rows in one of the LLM recipe's shapes, without a difficulty column."""
    rows = []
    for i in range(count):
        a, b = i % 9 + 1, i // 9 + 2
        question, answer = f"What is {a} + {b}?", str(a + b)
        if shape == "messages":  # every third chat has two turns, both learned
            turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            if i % 3 == 0:
                turns += [{"role": "user", "content": f"And {a} + 1?"}, {"role": "assistant", "content": str(a + 1)}]
            rows.append({"messages": turns})
        elif shape == "trl_prompt_completion":
            rows.append(
                {
                    "prompt": [{"role": "user", "content": question}],
                    "completion": [{"role": "assistant", "content": answer}],
                }
            )
        else:
            rows.append({"text": f"{a} plus {b} makes {answer}, and {b} plus {a} makes {answer} too."})
    return rows


@pytest.mark.parametrize(
    ("shape", "metric", "column"),
    [
        ("messages", "val/heldout/accuracy", "heldout acc (%)"),
        ("trl_prompt_completion", "val/heldout/accuracy", "heldout acc (%)"),
        ("text", "val/heldout/loss", "heldout loss"),
    ],
)
def test_llm_comparison_on_a_users_file_of_each_shape(tmp_path: Path, shape: str, metric: str, column: str) -> None:
    data = tmp_path / f"{shape}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _user_rows(shape)))
    output = tmp_path / "out"
    args = ["--recipe", "llm", "--dataset", str(data), "--policies", "full", "curriculum", "--max-epochs", "2"]
    assert run(output, *args, "--fast-dev") == 0
    titles = [cell.strip() for cell in (output / "summary.md").read_text().splitlines()[0].split("|")[1:-1]]
    assert titles[2:5] == [f"test {column}", f"final val {column}", f"best val {column}"]
    for policy in ("full", "curriculum"):
        stored = json.loads((output / "results" / policy / "seed_0.json").read_text())
        values = [epoch[metric] for epoch in stored["epochs"]]
        assert len(values) == 2
        assert stored["final_acc"] == values[-1]
        assert stored["best_acc"] == (max(values) if metric.endswith("accuracy") else min(values))
        assert stored["monitored"]["metric"] == metric
        assert math.isfinite(stored["test_acc"])
        scores = datasets_module().Dataset.from_parquet(
            str(output / "tensorboard" / policy / "seed_0" / "example_scores.parquet")
        )
        assert scores["index"] == list(range(stored["train_examples"]))
        assert {"source_index", "loss", "loss_ema"} <= set(scores.column_names)
        assert all(math.isfinite(value) for value in scores["loss"])  # every example was trained in epoch 1


def datasets_module() -> Any:
    return pytest.importorskip("datasets")


def test_a_loss_is_best_when_lowest_and_reached_at_or_below() -> None:
    def loss_run(policy: str, seed: int, losses: list[float]) -> RunResult:
        epochs = [
            {"val/heldout/loss": loss, "train_seconds": 2.0 * (i + 1), "sample_passes": 100.0 * (i + 1)}
            for i, loss in enumerate(losses)
        ]
        return RunResult(
            policy, seed, losses[-1], min(losses), 300, 8.0, 100, 10, "CPU", epochs, train_seconds=6.0,
            monitored={"metric": "val/heldout/loss", "test_metric": "test/heldout/loss",
                       "label": "validation held-out loss", "column": "heldout loss", "kind": "loss"},
        )  # fmt: skip

    # Full data's seeds end at 1.5 and 1.6: the target is 1.6, the loss every full-data seed reaches.
    runs = [
        loss_run("full", 0, [3.0, 2.0, 1.5]),
        loss_run("full", 1, [3.0, 1.7, 1.6]),
        loss_run("fast", 0, [2.5, 1.6, 1.8]),
    ]
    full, fast = summarize(runs, ["full", "fast"], "val/heldout/loss", higher_is_better=False)
    assert full.time_to_full_ratio == pytest.approx(1.0)
    assert fast.time_to_full_ratio == pytest.approx(4.0 / 6.0)  # 1.6 <= 1.6 after its second epoch
    assert fast.best_acc_mean == 1.6
    recipe = report.report_recipe(compare.RECIPES["llm"], runs)
    assert (recipe.metric, recipe.higher_is_better) == ("val/heldout/loss", False)
    table = report.markdown_table([full, fast], recipe, "")
    header, _, full_row, _ = [line for line in table.splitlines() if line.startswith("|")]
    titles = [cell.strip() for cell in header.split("|")[1:-1]]
    assert titles[2:5] == ["test heldout loss", "final val heldout loss", "best val heldout loss"]
    assert [cell.strip() for cell in full_row.split("|")[1:-1]][3] == "1.550 ± 0.0707"  # a loss, not a percentage
    figure = accuracy_figure(runs, ["full", "fast"], metric=recipe.metric, label=recipe.metric_label, percent=False)
    x, y = figure.axes[0].containers[1].lines[0].get_data()
    assert list(y) == [2.5, 1.6, 1.8]
    assert figure.axes[0].get_ylabel() == "validation held-out loss"


def test_a_policy_by_a_column_the_users_file_lacks_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "messages.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _user_rows("messages")))
    output = tmp_path / "refused"
    args = ["--recipe", "llm", "--dataset", str(data), "--policies", "full", "curriculum_difficulty", "--fast-dev"]
    assert run(output, *args) == 2
    error = capsys.readouterr().err
    assert "policy 'curriculum_difficulty' cannot run on --dataset" in error
    assert "ranks by 'difficulty', which is not a column of the training data" in error
    assert not (output / "results").exists()

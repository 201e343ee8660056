"""The precision the LLM recipe picks when none is given: by the CPU's bf16 flags, never by a timing."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")

from lightning_curricula.recipes.llm.cli import LLMRecipeCLI  # noqa: E402
from lightning_curricula.recipes.llm.model import TINY  # noqa: E402
from lightning_curricula.recipes.llm.precision import choose_precision, cpu_bf16_flags  # noqa: E402


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu {flags}\n")
    return path


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("avx512f avx512_bf16", "bf16-mixed"), ("amx_tile amx_bf16", "bf16-mixed"), ("avx512f avx512_vnni", "32-true")],
)
def test_a_cpu_trains_in_bf16_only_with_native_bf16_products(tmp_path: Path, flags: str, expected: str) -> None:
    precision, reason = choose_precision("cpu", cpuinfo=cpuinfo(tmp_path, flags))
    assert precision == expected
    assert ("natively" in reason) == (expected == "bf16-mixed")


def test_the_flags_are_read_from_every_flags_line_and_a_missing_file_has_none(tmp_path: Path) -> None:
    assert cpu_bf16_flags(cpuinfo(tmp_path, "amx_bf16 avx512_bf16")) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_flags(tmp_path / "missing") == []


@pytest.mark.parametrize("extra", [["--trainer.precision", "32-true"], ["--auto_precision", "false"]])
def test_the_cli_keeps_a_given_precision_and_can_leave_the_choice_to_lightning(extra: list[str]) -> None:
    cli = LLMRecipeCLI(args=["--model.model", TINY, "--trainer.logger", "false", *extra], run=False)
    assert cli.trainer.precision == "32-true"


def test_the_cli_chooses_the_precision_when_none_is_given() -> None:
    cli = LLMRecipeCLI(args=["--model.model", TINY, "--trainer.logger", "false"], run=False)
    assert cli.trainer.precision == choose_precision("cpu")[0]

"""What every benchmark script shares: the environment record, interleaved A/B pairs, ratios, JSON and markdown.

A timing comparison here is a list of *pairs*: one run without the thing measured (``baseline``) and
one with it, back to back in one process, the order inside a pair alternating from one pair to the
next (A B, B A, A B, ...), so that drifts in machine load hit both sides alike. `ratio_statistics`
reports the median of the per-pair ratios (robust to a slow pair) and the ratio of the fastest runs;
`interleaved_rounds` does the same for three or more variants, the order rotating from round to round.
Results go to one JSON file (`write_json`: the command, the settings, `environment()`, the summary
and every run) and to markdown tables (`markdown_table`) for docs/benchmarks.md.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning
import torch

__all__ = [
    "environment",
    "interleaved_pairs",
    "interleaved_rounds",
    "markdown_table",
    "quiet_lightning",
    "ratio_statistics",
    "write_json",
]

_WARNINGS = (
    ".*does not have many workers.*",
    ".*GPU available but not used.*",
    ".*log_every_n_steps.*",
    ".*LeafSpec.*is deprecated.*",
    ".*Starting from v1.9.0, `tensorboardX`.*",
)


def quiet_lightning(level: int = logging.WARNING) -> None:
    """Lightning's per-run info lines off, and the warnings every run of a benchmark would repeat."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(level)
    for pattern in _WARNINGS:
        warnings.filterwarnings("ignore", pattern)


def environment(device: str = "cpu", **extra: Any) -> dict[str, Any]:
    """Versions, device, threads and load: what a figure depends on besides the code."""
    if device == "cuda":
        device_name = torch.cuda.get_device_name()
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "device": device,
        "device_name": device_name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
        **extra,
    }


def interleaved_pairs(
    run: Callable[[bool], dict[str, Any]],
    repeats: int,
    *,
    warmup: int = 0,
    report: Callable[[str, bool, dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``repeats`` pairs of ``run(False)`` (baseline) and ``run(True)``, the order alternating; ``(baseline, treated)``.

    The first ``warmup`` pairs run but are not recorded. ``report(label, treated, result)`` is called
    after every run (``label`` is ``"warm-up"`` or ``"pair i/n"``).
    """
    baseline: list[dict[str, Any]] = []
    treated: list[dict[str, Any]] = []
    for pair in range(warmup + repeats):
        order = (False, True) if pair % 2 == 0 else (True, False)
        for side in order:
            result = run(side)
            label = "warm-up" if pair < warmup else f"pair {pair - warmup + 1}/{repeats}"
            if report is not None:
                report(label, side, result)
            if pair >= warmup:
                (treated if side else baseline).append(result)
    return baseline, treated


def interleaved_rounds(
    run: Callable[[str], dict[str, Any]],
    names: Sequence[str],
    repeats: int,
    *,
    warmup: int = 0,
    report: Callable[[str, str, dict[str, Any]], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """`interleaved_pairs` for more than two variants: ``repeats`` rounds of ``run(name)`` for every name.

    The order rotates from one round to the next (A B C, B C A, C A B, ...), so that each variant takes
    each place in a round equally often; the ratio of two variants is taken within a round
    (`ratio_statistics` of two of the returned lists). The first ``warmup`` rounds run but are not
    recorded; ``report(label, name, result)`` is called after every run.
    """
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in [*names[shift:], *names[:shift]]:
            result = run(name)
            label = "warm-up" if round_ < warmup else f"round {round_ - warmup + 1}/{repeats}"
            if report is not None:
                report(label, name, result)
            if round_ >= warmup:
                results[name].append(result)
    return results


def ratio_statistics(
    baseline: Sequence[float], treated: Sequence[float], *, names: tuple[str, str] = ("baseline", "treated")
) -> dict[str, Any]:
    """Medians and minimums of both sides, the median of the per-pair ratios ``treated / baseline``, min / min.

    Keys: ``<name>_median_s`` and ``<name>_min_s`` for both ``names``, ``median_pair_ratio``,
    ``min_ratio`` and ``pair_ratios``.
    """
    if len(baseline) != len(treated) or not baseline:
        raise ValueError(f"Need pairs: got {len(baseline)} baseline and {len(treated)} treated values.")
    ratios = [t / b for b, t in zip(baseline, treated, strict=True)]
    first, second = names
    return {
        f"{first}_median_s": statistics.median(baseline),
        f"{second}_median_s": statistics.median(treated),
        f"{first}_min_s": min(baseline),
        f"{second}_min_s": min(treated),
        "median_pair_ratio": statistics.median(ratios),
        "min_ratio": min(treated) / min(baseline),
        "pair_ratios": ratios,
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric_from: int = 1) -> str:
    """A markdown table; columns from ``numeric_from`` on are right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = [f"| {' | '.join(header)} |", f"|{'|'.join(align)}|"]
    lines += [f"| {' | '.join(str(cell) for cell in row)} |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, *, config: dict[str, Any], summary: dict[str, Any], runs: Any, **extra: Any) -> None:
    """One results file: the command line, the settings, the environment (pass it in ``extra``), summary, runs."""
    content = {
        "command": " ".join(["python", *sys.argv]),
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in config.items()},
        **extra,
        "summary": summary,
        "runs": runs,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")
    print(f"\nJSON written to {path}")

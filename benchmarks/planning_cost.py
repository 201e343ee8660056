"""Planning cost of every selection policy: one epoch's plan for N examples, on the CPU.

What is timed, for each policy (median of ``--repeats`` runs, wall clock):

- ``policy.plan``: ``policy.plan(EpochContext(...))`` called directly with a signals dict like the one
  ``TrainingDynamics.signals()`` returns (computed once, outside the timing);
- ``sampler.plan``: ``CurriculumSampler.plan()`` of a fresh sampler whose tracker holds the same
  tables: what the sampler pays per epoch (it derives the signal columns with
  ``dynamics.signals()``, builds the epoch's generator and calls the policy);
- ``iter W=1`` / ``iter W=8``: ``list(iter(sampler))`` on rank 0 of 1 or 8 ranks, with the plan
  already cached: picking the rank's shard and converting it to Python ``(index, weight)`` tuples,
  the part a ``DataLoader`` pays on top of the plan (``first`` in the JSON: the wait for the first
  item, ``next(iter(sampler))``, which a ``DataLoader`` pays before its first batch).

The synthetic tables are those of a classification run of ``--num-epochs`` epochs after ``--epoch``
finished epochs, drawn from a seeded ``torch.Generator``: losses from a log-normal, an EMA close to
them, EL2N and margins consistent with a true-class probability, AUM, correctness and forgetting
counts, a 0.1% of examples never seen, and a ``last_epoch`` column in which half the data was not
visited in the last epoch (as after a static pruning at epoch ``--epoch - 1``).

With ``--baseline REF`` the ``lightning_curricula`` package of git ref ``REF`` (for example ``main``)
and this tree's are timed side by side in one run: two worker processes plan each policy in turn.

Examples:
    python benchmarks/planning_cost.py                      # N = 10,000,000
    python benchmarks/planning_cost.py --n 1000000 --repeats 5 --out /tmp/planning_cost.json
    python benchmarks/planning_cost.py --no-sampler --threads 2 --baseline main --out planning_cost_10m.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from harness import environment, markdown_table, write_json
from torch import Tensor

from lightning_curricula import CurriculumSampler, TrainingDynamics
from lightning_curricula.policies import (
    Bandit,
    Curriculum,
    EpochContext,
    FullData,
    ImportanceSampling,
    InfoBatch,
    NoiseAware,
    Policy,
    RandomSubset,
    RandomTwin,
    SelfPaced,
    StaticPruning,
    epoch_generator,
)

TARGET_S = 1.0
NUM_CLASSES = 10


def synthetic_tables(n: int, epoch: int, seed: int) -> dict[str, Tensor]:
    """The persistent tables of `TrainingDynamics` after ``epoch`` epochs of a classification run."""
    g = torch.Generator().manual_seed(seed)
    seen = torch.rand(n, generator=g) >= 0.001  # 0.1% never seen (e.g. lost to non-finite losses)
    # Half of the data was left out of the last epoch (a pruned epoch): their last epoch is one earlier.
    in_last = torch.rand(n, generator=g) < 0.5
    last_epoch = torch.where(in_last, epoch - 1, epoch - 2).int()
    epochs_seen = torch.where(in_last, epoch, epoch - 1).int()
    epochs_seen = epochs_seen - (torch.rand(n, generator=g) < 0.2).int()  # some skipped another epoch
    # True-class probability: most examples learned, a tail of hard and a few mislabeled ones.
    logit_p = torch.randn(n, generator=g) * 2.0 + 2.0
    p_true = torch.sigmoid(logit_p)
    loss = -torch.log(p_true.clamp_min(1e-7))
    loss_ema = loss * torch.exp(torch.randn(n, generator=g) * 0.2)
    el2n = (1.0 - p_true) * 2**0.5 * torch.rand(n, generator=g).sqrt()
    margin = logit_p + torch.randn(n, generator=g) * 0.5
    correct_epochs = torch.binomial(epochs_seen.float(), p_true, generator=g).int()
    forgetting = torch.binomial((epochs_seen - 1).clamp_min(0).float(), 0.5 * p_true * (1 - p_true), generator=g)
    confidence = (p_true + torch.randn(n, generator=g) * 0.05).clamp(0, 1)
    spread = torch.rand(n, generator=g) * 0.2

    def unseen_int(values: Tensor, fill: int = 0) -> Tensor:
        return torch.where(seen, values, fill).int()

    def unseen_nan(values: Tensor) -> Tensor:
        return torch.where(seen, values, float("nan"))

    epochs = epochs_seen.float()
    return {
        "visits": unseen_int(epochs_seen),
        "epochs_seen": unseen_int(epochs_seen),
        "nonfinite": torch.zeros(n, dtype=torch.int32),
        "last_seen": unseen_int(last_epoch + 1, 0),
        "loss": unseen_nan(loss),
        "loss_ema": unseen_nan(loss_ema),
        "loss_sum": torch.where(seen, loss * epochs, 0.0),
        "margin": unseen_nan(margin),
        "el2n": unseen_nan(el2n),
        "margin_sum": torch.where(seen, (margin - 0.3) * epochs, 0.0),
        "confidence_sum": torch.where(seen, confidence * epochs, 0.0),
        "confidence_sq_sum": torch.where(seen, (confidence.square() + spread.square()) * epochs, 0.0),
        "correct_epochs": unseen_int(correct_epochs),
        "forgetting_events": unseen_int(forgetting),
        "last_correct": torch.where(seen, (torch.rand(n, generator=g) < p_true).to(torch.int8), -1).to(torch.int8),
    }


def tracker_with(tables: dict[str, Tensor], epoch: int) -> TrainingDynamics:
    """A `TrainingDynamics` holding ``tables`` as if ``epoch`` epochs had been synced."""
    n = int(tables["visits"].numel())
    dynamics = TrainingDynamics(num_examples=n)
    dynamics.load_state_dict({"version": 2, "num_examples": n, "epochs_tracked": epoch, "tables": tables})
    return dynamics


def policies(n: int, epoch: int, num_epochs: int, seed: int) -> list[tuple[str, Policy]]:
    """The policies to time, each planning a non-trivial epoch at ``epoch``."""
    labels = torch.randint(NUM_CLASSES, (n,), generator=torch.Generator().manual_seed(seed + 1))
    curriculum = Curriculum("loss", order="easy_to_hard")
    return [
        ("FullData", FullData()),
        ("RandomSubset(0.5) dynamic", RandomSubset(0.5)),
        ("RandomSubset(0.5, static=True)", RandomSubset(0.5, static=True)),
        ("Curriculum easy_to_hard", curriculum),
        ("Curriculum hard_to_easy", Curriculum("loss", order="hard_to_easy")),
        ("Curriculum random", Curriculum("loss", order="random")),
        ("Curriculum balanced", Curriculum("loss", order="balanced")),
        ("SelfPaced", SelfPaced("loss")),
        ("StaticPruning el2n, selection epoch", StaticPruning("el2n", keep=0.5, score_epochs=epoch)),
        ("StaticPruning el2n, later epoch", StaticPruning("el2n", keep=0.5, score_epochs=epoch - 1)),
        (
            "StaticPruning class-balanced, selection",
            StaticPruning("el2n", keep=0.5, score_epochs=epoch, labels=labels, class_balanced=True),
        ),
        ("InfoBatch prune=0.5 (ratio)", InfoBatch(0.5)),
        ("InfoBatch budget=0.7", InfoBatch(budget=0.7)),
        ("Bandit(0.5) ucb", Bandit(0.5, strategy="ucb")),
        ("Bandit(0.5) epsilon_greedy", Bandit(0.5, strategy="epsilon_greedy")),
        ("ImportanceSampling(0.5)", ImportanceSampling(0.5)),
        ("NoiseAware(Curriculum) demote", NoiseAware(Curriculum("loss"), mode="demote")),
        ("NoiseAware(Curriculum) drop", NoiseAware(Curriculum("loss"), mode="drop")),
        ("RandomTwin(Curriculum)", RandomTwin(curriculum)),
    ]


def measure(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """``(median wall s, median CPU s, last result)`` of ``repeats`` calls of ``fn``.

    CPU time (``time.process_time``: all threads of this process) is reported next to wall time because the
    machine may be shared: other processes stretch the wall time of the work much more than its CPU time.
    """
    walls, cpus = [], []
    result = None
    for _ in range(repeats):
        result = None
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return statistics.median(walls), statistics.median(cpus), result


def time_policies(args: argparse.Namespace, names: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Build the tables once, then time each policy of ``names`` as it is asked for; yield a row per policy."""
    n, epoch, num_epochs, seed = args.n, args.epoch, args.num_epochs, args.seed
    print(f"building synthetic tables for N={n:,} ...", file=sys.stderr)
    tables = synthetic_tables(n, epoch, seed)
    signals = tracker_with(tables, epoch).signals()
    catalog = dict(policies(n, epoch, num_epochs, seed))
    for name in names:
        policy = catalog[name]
        print(f"  {name} ...", file=sys.stderr)

        def context(at: int = epoch) -> EpochContext:
            generator = epoch_generator(seed, at)
            return EpochContext(
                epoch=at, num_examples=n, generator=generator, seed=seed, num_epochs=num_epochs, signals=signals
            )

        if isinstance(policy, StaticPruning) and policy.score_epochs < epoch:
            policy.plan(context(policy.score_epochs))  # chooses and keeps its subset, as in the selection epoch

        def direct(policy: Policy = policy) -> Any:
            return policy.plan(context())

        direct_s, direct_cpu, plan = measure(direct, args.repeats)
        size = len(plan)
        del plan
        row: dict[str, Any] = {
            "policy": name,
            "plan_size": size,
            "kept_fraction": size / n,
            "policy_plan_s": direct_s,
            "policy_plan_cpu_s": direct_cpu,
        }
        if not args.no_sampler:
            dynamics = tracker_with(tables, epoch)

            def sampler_plan(policy: Policy = policy, dynamics: TrainingDynamics = dynamics) -> int:
                sampler = CurriculumSampler(range(n), policy, dynamics=dynamics, num_epochs=num_epochs, seed=seed)
                return len(sampler.plan())

            row["sampler_plan_s"], row["sampler_plan_cpu_s"], _ = measure(sampler_plan, args.repeats)
            for world in (1, 8):
                sampler = CurriculumSampler(
                    range(n), policy, dynamics=dynamics, num_epochs=num_epochs, seed=seed, num_replicas=world, rank=0
                )
                sampler.plan()  # cached: iterating pays only the shard and the conversion to Python

                def iterate(sampler: CurriculumSampler = sampler) -> int:
                    sampler._iterations = 0  # each timed call stands for a fresh epoch's first iteration
                    return len(list(iter(sampler)))

                def first(sampler: CurriculumSampler = sampler) -> Any:
                    sampler._iterations = 0
                    return next(iter(sampler))

                row[f"first_w{world}_s"], _, _ = measure(first, args.iter_repeats)
                row[f"iter_w{world}_s"], row[f"iter_w{world}_cpu_s"], items = measure(iterate, args.iter_repeats)
                row[f"shard_w{world}"] = items
                row[f"total_w{world}_s"] = row["sampler_plan_s"] + row[f"iter_w{world}_s"]
                del sampler
        row["meets_target"] = row["policy_plan_s"] < TARGET_S and row.get("sampler_plan_s", 0.0) < TARGET_S
        yield row
        gc.collect()


def selected(args: argparse.Namespace) -> list[str]:
    """The names of the policies to time (``--only`` filters them)."""
    names = [name for name, _ in policies(8, args.epoch, args.num_epochs, args.seed)]
    return [name for name in names if not args.only or any(part.lower() in name.lower() for part in args.only)]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time every policy in this process; a row per policy."""
    return list(time_policies(args, selected(args)))


def worker(args: argparse.Namespace) -> None:
    """``--worker``: say which package is timed, then time each policy named on stdin; a JSON line per row."""
    import lightning_curricula

    print(json.dumps({"package": str(Path(lightning_curricula.__file__).parent)}), flush=True)
    for row in time_policies(args, (line.strip() for line in sys.stdin if line.strip())):
        print(json.dumps(row), flush=True)


def run_against(args: argparse.Namespace) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """``--baseline REF``: time ``REF``'s package and this tree's side by side, policy by policy, in turns.

    Two worker processes build the same tables; for each policy one of them plans, then the other (the
    first alternates), so drift in the machine's load hits both alike. Returns the package path of each
    side and a row per policy (``{"policy", "before", "after"}``).
    """
    root = Path(__file__).resolve().parents[1]
    sides: dict[str, subprocess.Popen[str]] = {}
    with tempfile.TemporaryDirectory() as baseline:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", args.baseline, "lightning_curricula"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", baseline], input=archive, check=True)
        forwarded = [
            *("--n", str(args.n), "--epoch", str(args.epoch), "--num-epochs", str(args.num_epochs)),
            *("--repeats", str(args.repeats), "--iter-repeats", str(args.iter_repeats)),
            *("--seed", str(args.seed), "--threads", str(args.threads)),
            *(("--no-sampler",) if args.no_sampler else ()),
        ]
        for side, path in (("before", baseline), ("after", str(root))):
            env = {**os.environ, "PYTHONPATH": path}
            sides[side] = subprocess.Popen(
                [sys.executable, __file__, "--worker", *forwarded],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
        packages = {side: json.loads(process.stdout.readline())["package"] for side, process in sides.items()}  # type: ignore[union-attr]
        rows = []
        for turn, name in enumerate(selected(args)):
            row: dict[str, Any] = {"policy": name}
            for side in ("before", "after") if turn % 2 == 0 else ("after", "before"):
                process = sides[side]
                process.stdin.write(name + "\n")  # type: ignore[union-attr]
                process.stdin.flush()  # type: ignore[union-attr]
                row[side] = json.loads(process.stdout.readline())  # type: ignore[union-attr]
            rows.append(row)
        for process in sides.values():
            process.stdin.close()  # type: ignore[union-attr]
            process.wait()
    return packages, rows


def table_against(rows: list[dict[str, Any]], baseline: str) -> str:
    """``--baseline`` results: ``policy.plan`` wall seconds (CPU seconds) before and after, side by side."""
    header = ["policy", "kept", f"before ({baseline}) s", "after s", "after / before", "after < 1 s"]
    cells = []
    for row in rows:
        before, after = row["before"], row["after"]
        cells.append(
            [
                row["policy"],
                f"{after['kept_fraction']:.3f}",
                f"{before['policy_plan_s']:.2f} ({before['policy_plan_cpu_s']:.2f})",
                f"{after['policy_plan_s']:.2f} ({after['policy_plan_cpu_s']:.2f})",
                f"{after['policy_plan_s'] / before['policy_plan_s']:.2f}",
                "yes" if after["meets_target"] else "no",
            ]
        )
    return markdown_table(header, cells)


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table: wall seconds, with CPU seconds in parentheses where measured."""
    sampler = "sampler_plan_s" in rows[0] if rows else False
    header = ["policy", "kept", "`policy.plan` s"]
    if sampler:
        header += ["`sampler.plan` s", "iter W=1 s", "iter W=8 s", "plan + iter W=1 s", "plan + iter W=8 s"]
    cells = []
    for row in rows:

        def cell(key: str, row: dict[str, Any] = row) -> str:
            return f"{row[key + '_s']:.2f} ({row[key + '_cpu_s']:.2f})"

        line = [row["policy"], f"{row['kept_fraction']:.3f}", cell("policy_plan")]
        if sampler:
            line += [cell("sampler_plan"), cell("iter_w1"), cell("iter_w8")]
            line += [f"{row['total_w1_s']:.2f}", f"{row['total_w8_s']:.2f}"]
        cells.append([*line, "yes" if row["meets_target"] else "no"])
    return markdown_table([*header, "plan < 1 s"], cells)


def summarize(rows: list[dict[str, Any]], baseline: str | None) -> dict[str, Any]:
    """Each policy's ``policy.plan`` seconds (before and after with ``--baseline``) and whether all meet the target."""
    if baseline:
        policies = {
            row["policy"]: {
                "before_policy_plan_s": row["before"]["policy_plan_s"],
                "after_policy_plan_s": row["after"]["policy_plan_s"],
                "after_over_before": row["after"]["policy_plan_s"] / row["before"]["policy_plan_s"],
                "meets_target": row["after"]["meets_target"],
            }
            for row in rows
        }
    else:
        policies = {row["policy"]: {k: row[k] for k in ("policy_plan_s", "meets_target")} for row in rows}
    return {
        "target_s": TARGET_S,
        "all_meet_target": all(p["meets_target"] for p in policies.values()),
        "policies": policies,
    }


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000, help="number of examples (default 10,000,000)")
    parser.add_argument("--epoch", type=int, default=5, help="the epoch planned (epochs already synced)")
    parser.add_argument("--num-epochs", type=int, default=20, help="the run's max_epochs")
    parser.add_argument("--repeats", type=int, default=3, help="timed plans per measurement; the median is reported")
    parser.add_argument("--iter-repeats", type=int, default=1, help="timed iterations over the shard (slow at large N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-sampler", action="store_true", help="time policy.plan only")
    parser.add_argument("--only", nargs="*", help="time only the policies whose name contains one of these")
    parser.add_argument("--out", help="write the results as JSON to this path")
    parser.add_argument(
        "--baseline", help="a git ref (such as main): time its lightning_curricula and this tree's side by side"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epoch < 2 or args.epoch >= args.num_epochs:
        parser.error("--epoch must be in [2, num_epochs)")
    if args.threads:
        torch.set_num_threads(args.threads)  # here and in the --worker processes, which get the same option
    if args.worker:
        worker(args)
        return
    env = environment("cpu", torch_interop_threads=torch.get_num_interop_threads())
    packages: dict[str, str] = {}
    if args.baseline:
        packages, rows = run_against(args)
    else:
        rows = run(args)
    print(
        f"\nN = {args.n:,}, epoch {args.epoch} of {args.num_epochs}, median of {args.repeats}; "
        f"torch {env['torch']} with {env['torch_threads']} threads on {env['cpu_count']} CPUs "
        f"(load average {env['load_average'][0]:.1f}); wall seconds, CPU seconds in parentheses; "
        f"target: each plan < {TARGET_S:g} s\n"
    )
    print(table_against(rows, args.baseline) if args.baseline else table(rows))
    if args.out:
        extra = {"packages": packages} if args.baseline else {}
        summary = summarize(rows, args.baseline)
        write_json(Path(args.out), config=vars(args), environment=env, summary=summary, runs=rows, **extra)


if __name__ == "__main__":
    main()

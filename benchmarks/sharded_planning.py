"""The policies' plans from sharded tables, W ranks as threads: identity with the unsharded plan, time per rank.

For each policy that plans from shards (`Policy.plans_from_shards`) and each ``W`` in ``--worlds``, at ``N = --n``:

- unsharded: ``policy.plan`` of the whole synthetic table (``planning_cost.synthetic_tables``, the tables of a
  classification run), then each rank's strided positions ``r, r + W, ...`` of the plan (what
  `CurriculumSampler` does);
- sharded: every thread-rank holds its slice of the table (`TableShard`), calls ``policy.plan`` with it in the
  `EpochContext` and fetches its positions with `ShardedPlan.take`, as `CurriculumSampler` does with a
  ``TrainingDynamics(sharded=True)``. Per rank: CPU seconds (``time.thread_time``, one torch thread per rank)
  and bytes sent through the collectives, for the plan and the fetch of its positions together.

Every rank's ids and weights must equal its positions of the unsharded plan (``identical``). The epoch planned
is a pruning epoch (after the warm-up). Unsharded times are for one process with ``--threads`` torch threads.

Examples:
    python benchmarks/sharded_planning.py --n 4000000 --worlds 1 2 4 8 --out sharded_planning.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from harness import environment, markdown_table, write_json
from planning_cost import synthetic_tables
from torch import Tensor

from lightning_curricula.distributed import Collectives, TableShard, ThreadCollectives
from lightning_curricula.policies import (
    Bandit,
    Curriculum,
    EpochContext,
    FullData,
    InfoBatch,
    Plan,
    Policy,
    RandomSubset,
    ShardedPlan,
    StaticPruning,
    epoch_generator,
)
from lightning_curricula.policies._sampler import shard_positions
from lightning_curricula.tracking._tables import signal_columns

EPOCH, NUM_EPOCHS, SEED = 3, 10, 0


def policies() -> dict[str, Policy]:
    return {
        "FullData": FullData(),
        "RandomSubset(0.5)": RandomSubset(0.5),
        "Curriculum easy_to_hard": Curriculum(start=0.2, saturation=0.8),
        "StaticPruning el2n, selection": StaticPruning("el2n", keep=0.5, score_epochs=EPOCH),
        "InfoBatch prune=0.5": InfoBatch(0.5),
        "Bandit(0.5) ucb": Bandit(0.5),
    }


def context(n: int, signals: dict[str, Tensor], shard: TableShard | None = None) -> EpochContext:
    return EpochContext(EPOCH, n, epoch_generator(SEED, EPOCH), SEED, NUM_EPOCHS, signals, shard)


def unsharded(policy: Policy, n: int, signals: dict[str, Tensor], world: int) -> tuple[float, list[Tensor]]:
    copy.deepcopy(policy).plan(context(n, signals))  # warm-up: the first call pays one-time allocations
    begin = time.process_time()
    plan = copy.deepcopy(policy).plan(context(n, signals))
    seconds = time.process_time() - begin
    assert isinstance(plan, Plan)
    positions = [shard_positions(len(plan), world, rank, False) for rank in range(world)]
    return seconds, [torch.stack([plan.indices[p].double(), plan.weights[p].double()]) for p in positions]


def sharded(policy: Policy, n: int, signals: dict[str, Tensor], world: int) -> list[dict[str, Any]]:
    def rank_main(comm: Collectives) -> dict[str, Any]:
        torch.set_num_threads(1)
        shard = TableShard(comm, n)
        mine = {key: value[shard.start : shard.stop] for key, value in signals.items()}
        own = copy.deepcopy(policy)
        begin = time.thread_time()
        plan = own.plan(context(n, mine, shard))
        assert isinstance(plan, ShardedPlan)
        ids, weights = plan.take(shard_positions(len(plan), world, comm.rank, False))
        return {
            "seconds": time.thread_time() - begin,
            "bytes_sent": comm.bytes_sent,
            "visits": torch.stack([ids.double(), weights.double()]),
        }

    return ThreadCollectives.run(world, rank_main)  # type: ignore[no-any-return]


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4_000_000)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the unsharded plan")
    parser.add_argument("--out", type=Path, default=Path("sharded_planning.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    signals = signal_columns(synthetic_tables(args.n, EPOCH, SEED))
    rows, runs = [], []
    for name, policy in policies().items():
        for world in args.worlds:
            whole_seconds, expected = unsharded(policy, args.n, signals, world)
            ranks = sharded(policy, args.n, signals, world)
            identical = all(torch.equal(rank["visits"], want) for rank, want in zip(ranks, expected, strict=True))
            seconds = [rank["seconds"] for rank in ranks]
            sent = max(rank["bytes_sent"] for rank in ranks)
            run = {
                "policy": name,
                "world": world,
                "identical": identical,
                "unsharded_cpu_s": whole_seconds,
                "rank_cpu_s": seconds,
                "max_bytes_sent": sent,
            }
            runs.append(run)
            rows.append(
                [
                    name,
                    world,
                    "yes" if identical else "**no**",
                    f"{whole_seconds:.2f}",
                    f"{statistics.median(seconds):.3f}, {max(seconds):.3f}",
                    f"{sent / 2**20:.1f} MiB",
                ]
            )
            print(rows[-1], flush=True)
    header = [
        "policy",
        "W",
        "identical",
        "unsharded plan CPU s",
        "sharded plan + take, CPU s / rank (median, max)",
        "bytes sent / rank (max)",
    ]
    print(markdown_table(header, rows, numeric_from=1))
    write_json(
        args.out,
        config=vars(args),
        summary={"all_identical": all(r["identical"] for r in runs)},
        runs=runs,
        environment=environment(),
    )


if __name__ == "__main__":
    main()

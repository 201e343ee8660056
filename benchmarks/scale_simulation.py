"""Sharded tables and plans, simulated in one process: W ranks as threads, checked against the unsharded plan.

For each ``W`` in ``--worlds``, at ``N = --n`` examples:

1. every rank holds its shard of a difficulty column (ids ``[r N / W, (r + 1) N / W)``) and its share of
   one epoch's per-visit records (8-byte id + ``--columns`` float32 values);
2. ``reduce_records`` routes the records to their owners (the epoch end of a sharded tracker);
3. ``easiest_set_shard`` selects the easiest ``--keep`` share (exact k-th value by radix histograms, ties
   to the lower id), and ``permuted_shard`` gives each rank its positions ``r, r + W, ...`` of the shuffled
   plan of that distributed set (the sampler's shard);
4. the result is compared with the unsharded computation (``easiest_set``, ``shuffled_plan``, the rank's
   strided positions, and the dense ``index_add_`` table): they must be identical.

Per rank it reports the CPU seconds of its plan (``time.thread_time``, torch on one thread per rank), the
bytes it sent through the collectives, and the bytes of the tables it holds. ``--project`` then prints the
table for ``N = 1e9`` and ``W = 8 ... 1024``: memory and bytes moved computed exactly from the layout,
plan time extrapolated from the measured CPU seconds per shard element.

Examples:
    python benchmarks/scale_simulation.py --n 4000000 --worlds 1 4 16 64 --out scale_simulation.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch

from lightning_curricula.distributed import (
    Collectives,
    ThreadCollectives,
    easiest_set_shard,
    generator_key,
    permuted_shard,
    reduce_records,
    shard_bounds,
)
from lightning_curricula.policies._sampler import shard_positions
from lightning_curricula.policies.selection import easiest_set, shuffled_plan

TABLE_BYTES = {"classification (target: 64 B)": 64, "loss only (target: 24 B)": 24}
RECORD_BYTES_PER_COLUMN = 4
ID_BYTES = 8
PLAN_EXCHANGE_BYTES = 16 + 20  # request (origin, position) + answer (origin, id, weight) per planned visit


def simulate(n: int, world: int, keep: float, columns: int, seed: int) -> dict[str, Any]:
    """One epoch end and one plan on ``world`` simulated ranks; identity with the unsharded run is checked."""
    g = torch.Generator().manual_seed(seed)
    difficulty = torch.round(torch.rand(n, generator=g) * 1000) / 1000  # ties
    visits = torch.randperm(n, generator=g)  # one epoch: every id once, spread over the ranks in turn
    values = torch.rand(n, columns, generator=g)
    size = max(1, round(keep * n))
    plan_seed = seed + 1

    def rank_main(comm: Collectives) -> dict[str, Any]:
        start, stop = shard_bounds(n, world, comm.rank)
        mine = slice(comm.rank, n, world)
        local_difficulty = difficulty[start:stop].clone()
        begin = time.thread_time()
        table = reduce_records(visits[mine], values[mine], n, comm)
        reduced = time.thread_time()
        reduce_bytes = comm.bytes_sent
        selected = easiest_set_shard(local_difficulty, size, start, comm)
        positions = shard_positions(size, world, comm.rank, drop_last=False)
        ids, _ = permuted_shard(selected, generator_key(torch.Generator().manual_seed(plan_seed)), positions, comm)
        planned = time.thread_time()
        return {
            "ids": ids,
            "table": table,
            "reduce_cpu_s": reduced - begin,
            "plan_cpu_s": planned - reduced,
            "reduce_bytes_sent": reduce_bytes,
            "plan_bytes_sent": comm.bytes_sent - reduce_bytes,
            "table_bytes": table.numel() * table.element_size() + local_difficulty.numel() * 4,
            "shard_size": stop - start,
        }

    wall = time.perf_counter()
    ranks = ThreadCollectives.run(world, rank_main)
    wall = time.perf_counter() - wall
    # The unsharded run: the dense table in the ranks' order, the whole plan, each rank's strided shard.
    dense = torch.zeros(n, columns).index_add_(
        0, torch.cat([visits[r::world] for r in range(world)]), torch.cat([values[r::world] for r in range(world)])
    )
    plan = shuffled_plan(easiest_set(difficulty, size), torch.Generator().manual_seed(plan_seed))
    identical = all(
        torch.equal(rank["ids"], plan.indices[shard_positions(size, world, r, drop_last=False)])
        and torch.equal(rank["table"], dense[slice(*shard_bounds(n, world, r))])
        for r, rank in enumerate(ranks)
    )
    plan_cpu = [rank["plan_cpu_s"] for rank in ranks]
    return {
        "n": n,
        "world": world,
        "identical_to_unsharded": identical,
        "wall_s": wall,
        "plan_cpu_s_median": statistics.median(plan_cpu),
        "plan_cpu_s_max": max(plan_cpu),
        "reduce_cpu_s_max": max(rank["reduce_cpu_s"] for rank in ranks),
        "plan_bytes_sent_max": max(rank["plan_bytes_sent"] for rank in ranks),
        "reduce_bytes_sent_max": max(rank["reduce_bytes_sent"] for rank in ranks),
        "table_bytes_max": max(rank["table_bytes"] for rank in ranks),
        "shard_size_max": max(rank["shard_size"] for rank in ranks),
    }


def fit_plan_time(measured: list[dict[str, Any]]) -> tuple[float, float]:
    """``(fixed seconds, seconds per shard element)``: least squares through the simulated ranks' plan times."""
    sizes = torch.tensor([float(row["shard_size_max"]) for row in measured], dtype=torch.float64)
    seconds = torch.tensor([row["plan_cpu_s_max"] for row in measured], dtype=torch.float64)
    design = torch.stack([torch.ones_like(sizes), sizes], 1)
    fixed, slope = torch.linalg.lstsq(design, seconds.unsqueeze(1)).solution.squeeze(1).tolist()
    return max(fixed, 0.0), slope


def projection(
    n: int, worlds: list[int], columns: int, keep: float, fixed: float, cpu_per_element: float
) -> list[dict[str, Any]]:
    """Per-rank memory, bytes moved per epoch and plan time at ``n`` examples, for each world size."""
    rows = []
    for world in worlds:
        shard = -(-n // world)
        remote = (world - 1) / world  # the share of a rank's visits owned by other ranks
        record = ID_BYTES + columns * RECORD_BYTES_PER_COLUMN
        row: dict[str, Any] = {"world": world, "shard_size": shard}
        for name, per_example in TABLE_BYTES.items():
            row[f"memory {name}"] = per_example * shard
        row["epoch_end_bytes_sent"] = shard * record * remote  # a full epoch: N / W visits per rank
        row["replicated_all_reduce_bytes_sent"] = 2 * remote * n * columns * RECORD_BYTES_PER_COLUMN  # ring
        row["plan_bytes_sent"] = keep * shard * PLAN_EXCHANGE_BYTES * remote + 2 * (1 << 16) * 8 * 2 * remote
        row["plan_cpu_s"] = fixed + cpu_per_element * shard
        rows.append(row)
    return rows


def human(size: float) -> str:
    """Bytes with a binary unit."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size:.0f} B"
        size /= 1024
    raise AssertionError


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4_000_000, help="examples in the simulation")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 4, 16, 64], help="simulated world sizes")
    parser.add_argument("--keep", type=float, default=0.5, help="share of the data in the plan")
    parser.add_argument("--columns", type=int, default=7, help="float32 values per visit record (the tracker's: 7)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--project", type=float, default=1e9, help="N of the computed table")
    parser.add_argument("--project-worlds", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512, 1024])
    parser.add_argument("--out", help="write the results as JSON to this path")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread per simulated rank: each rank's CPU time is its own work
    measured = [simulate(args.n, world, args.keep, args.columns, args.seed) for world in args.worlds]
    print(f"\nSimulated: N = {args.n:,}, keep {args.keep}, {args.columns} float32 columns per record\n")
    print(
        "| W | identical to unsharded | shard size | plan CPU s / rank (median, max) | epoch-end CPU s / rank (max) "
        "| plan bytes sent / rank | epoch-end bytes sent / rank | table bytes / rank |"
    )
    print("|---:|:---:|---:|---:|---:|---:|---:|---:|")
    for row in measured:
        print(
            f"| {row['world']} | {'yes' if row['identical_to_unsharded'] else 'NO'} | {row['shard_size_max']:,} "
            f"| {row['plan_cpu_s_median']:.3f}, {row['plan_cpu_s_max']:.3f} | {row['reduce_cpu_s_max']:.3f} "
            f"| {human(row['plan_bytes_sent_max'])} | {human(row['reduce_bytes_sent_max'])} "
            f"| {human(row['table_bytes_max'])} |"
        )
    fixed, per_element = fit_plan_time(measured)
    projected = projection(int(args.project), args.project_worlds, args.columns, args.keep, fixed, per_element)
    print(
        f"\nComputed: N = {args.project:,.0f}, plan CPU s per rank = {fixed:.3f} + {per_element * 1e9:.1f} ns x "
        "shard size (a least-squares line through the simulated ranks' maxima)\n"
    )
    names = list(TABLE_BYTES)
    print(
        f"| W | ids / rank | memory / rank, {names[0]} | {names[1]} | epoch end: bytes sent / rank "
        "| replicated all-reduce: bytes sent / rank | plan: bytes sent / rank | plan CPU s / rank |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in projected:
        print(
            f"| {row['world']} | {row['shard_size']:,} | {human(row['memory ' + names[0]])} "
            f"| {human(row['memory ' + names[1]])} | {human(row['epoch_end_bytes_sent'])} "
            f"| {human(row['replicated_all_reduce_bytes_sent'])} | {human(row['plan_bytes_sent'])} "
            f"| {row['plan_cpu_s']:.2f} |"
        )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(
                {
                    "args": vars(args),
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                    "measured": measured,
                    "projected": projected,
                },
                handle,
                indent=2,
            )


if __name__ == "__main__":
    main()

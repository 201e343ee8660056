"""The LLM testbed: several reasoning-gym families at a small model's level, each a group with known difficulty.

One family is one reasoning-gym task with a config that keeps its answers short and its per-example
difficulty spread (the ranges reasoning-gym draws from, `load_reasoning_gym`). `load_testbed` generates
a training pool and disjoint validation and test pools for every family, with a ``family`` column (the
group each example belongs to) and the task's own scorer behind `testbed_scorer`.

``dataset="testbed"`` in `InstructionDataModule` uses `TESTBED_FAMILIES`; ``"testbed:chain_sum,gcd"``
picks some of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from lightning_curricula.recipes.llm.data import Scorer, load_reasoning_gym, make_scorer

if TYPE_CHECKING:
    import datasets

__all__ = ["TESTBED_FAMILIES", "TESTBED_PREFIX", "Family", "load_testbed", "parse_testbed", "testbed_scorer"]

#: ``dataset="testbed"`` (every family) or ``"testbed:<family>,<family>"``.
TESTBED_PREFIX = "testbed"


@dataclass(frozen=True)
class Family:
    """A reasoning-gym task and the config that puts it at the testbed's level.

    Args:
        task: the reasoning-gym task name.
        config: its config; the ranges in it spread the per-example difficulty.
        levels: config overrides from easiest to hardest, for a task whose metadata reports no per-example
            difficulty (`load_reasoning_gym`'s ``levels``).
    """

    task: str
    config: Mapping[str, Any] = field(default_factory=dict)
    levels: Sequence[Mapping[str, Any]] | None = None


#: The testbed's families, chosen to sit between the floor and the ceiling of SmolLM2-135M-Instruct fine-tuned
#: with LoRA: short answers, and config ranges that spread the per-example difficulty. Measured so far
#: (benchmarks/llm_testbed.py, docs/benchmarks/llm.md): the from-scratch proxy after full data plateaus at
#: 14-15% over families, with gcd, count_bits and letter_counting at 18-53% and the arithmetic ones near 0.
TESTBED_FAMILIES: dict[str, Family] = {
    "chain_sum": Family("chain_sum", {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2}),
    "simple_equations": Family(
        "simple_equations",
        {"min_value": 1},
        levels=[{"min_terms": 2, "max_terms": 2, "max_value": 10}, {"min_terms": 2, "max_terms": 3, "max_value": 20}],
    ),
    "gcd": Family(
        "gcd", {"min_numbers": 2, "max_numbers": 2, "min_value": 1}, levels=[{"max_value": 30}, {"max_value": 100}]
    ),
    "lcm": Family(
        "lcm", {"min_numbers": 2, "max_numbers": 2, "min_value": 1}, levels=[{"max_value": 20}, {"max_value": 40}]
    ),
    "count_bits": Family("count_bits", {"min_n": 1, "max_n": 1023}),
    "letter_counting": Family(
        "letter_counting", levels=[{"min_words": 3, "max_words": 4}, {"min_words": 5, "max_words": 8}]
    ),
    "number_sequence": Family(
        "number_sequence",
        {"min_terms": 4, "max_terms": 7, "min_value": -20, "max_value": 20},
        levels=[{"max_complexity": 1}, {"max_complexity": 2}],
    ),
    "leg_counting": Family(
        "leg_counting", {"min_animals": 1, "max_animals": 3, "min_instances": 1, "max_instances": 5}
    ),
}

_EVAL_SEED_OFFSETS = (1_000_003, 2_000_003)  # validation, test


def parse_testbed(name: str) -> list[str]:
    """The family names of ``"testbed"`` (all) or ``"testbed:<family>,..."``.

    Raises:
        ValueError: an unknown family, named with the valid ones.

    Example:
        >>> parse_testbed("testbed:gcd,chain_sum")
        ['gcd', 'chain_sum']
    """
    if name == TESTBED_PREFIX:
        return list(TESTBED_FAMILIES)
    if not name.startswith(f"{TESTBED_PREFIX}:"):
        raise ValueError(f"A testbed dataset is 'testbed' or 'testbed:<family>,...', got {name!r}.")
    families = [part.strip() for part in name[len(TESTBED_PREFIX) + 1 :].split(",") if part.strip()]
    unknown = [family for family in families if family not in TESTBED_FAMILIES]
    if unknown or not families:
        raise ValueError(f"Unknown testbed families {unknown or families}; valid: {', '.join(TESTBED_FAMILIES)}.")
    return families


def load_testbed(
    families: Sequence[str], *, train_per_family: int, eval_per_family: int, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset]:
    """Training, validation and test rows of ``families``: ``train_per_family`` and ``eval_per_family`` each.

    Each family is generated from its own seed (the run's ``seed`` mixed with the family's position), the
    held-out pools from other seeds; a question already in an earlier split of its family is dropped from
    the later one, so the splits are disjoint (each split is drawn from four times its size, so it is full
    unless the family has too few distinct questions). Rows carry
    ``family`` and the task's ``difficulty`` in ``[0, 1]``; ``metadata`` holds the task name for the scorer.

    Example:
        >>> train, validation, test = load_testbed(["chain_sum", "gcd"], train_per_family=4, eval_per_family=2)
        >>> sorted(set(train["family"])), len(train)
        (['chain_sum', 'gcd'], 8)
    """
    import datasets

    splits: list[list[datasets.Dataset]] = [[], [], []]
    for position, name in enumerate(families):
        family = TESTBED_FAMILIES[name]
        family_seed = seed * 1_009 + position
        seen: set[str] = set()
        for split, (size, offset) in enumerate(
            zip((train_per_family, eval_per_family, eval_per_family), (0, *_EVAL_SEED_OFFSETS), strict=True)
        ):
            if size <= 0:
                continue
            # Four times the rows asked for, then the first `size` not seen in an earlier split: small question
            # spaces (lcm, gcd, count_bits) still fill their held-out pools.
            rows = load_reasoning_gym(
                family.task, 4 * size, family_seed + offset, levels=family.levels, **family.config
            )
            fresh = [i for i, question in enumerate(rows["question"]) if question not in seen]
            order = torch.randperm(len(fresh), generator=torch.Generator().manual_seed(family_seed + offset))
            rows = rows.select(sorted(fresh[i] for i in order[:size].tolist()))  # a random share of every level
            seen |= set(rows["question"])
            rows = rows.select_columns(["question", "answer", "difficulty", "metadata"])
            rows = rows.map(_tag, fn_kwargs={"family": name, "task": family.task})
            splits[split].append(rows)
    empty = datasets.Dataset.from_dict({"question": [], "answer": [], "difficulty": [], "metadata": [], "family": []})
    train, validation, test = (datasets.concatenate_datasets(parts) if parts else empty for parts in splits)
    return train, validation, test


def _tag(row: dict[str, Any], *, family: str, task: str) -> dict[str, Any]:
    metadata = json.loads(row["metadata"])
    return {"family": family, "metadata": json.dumps({**metadata, "testbed_task": task})}


def testbed_scorer() -> Scorer:
    """Grade an answer with its family's reasoning-gym scorer (the task named in the row's metadata)."""
    scorers: dict[str, Scorer] = {}

    def score(prediction: str, entry: Mapping[str, Any]) -> float:
        metadata = entry["metadata"]
        task = (json.loads(metadata) if isinstance(metadata, str) else metadata)["testbed_task"]
        if task not in scorers:
            scorers[task] = make_scorer(task)
        return scorers[task](prediction, entry)

    return score

"""``lightning-curricula compare``: run curricula × seeds on a recipe and compare them by compute.

Each run is a recipe's ``LightningCLI`` (``--recipe vision``: `lightning_curricula.recipes.vision.cli.VisionCLI`, the
default; ``--recipe llm``: `lightning_curricula.recipes.llm.cli.LLMRecipeCLI`) with one of the YAML configs shipped in
``recipes/<recipe>/configs`` (the policy names are their file names), built with ``run=False`` and
fitted here, so a comparison run is exactly what ``python -m recipes.<recipe> fit --config ...``
trains. The accuracy compared is the vision recipe's test accuracy, or the LLM recipe's exact-match
accuracy on the held-out *hard* split (its easy-split accuracy, token count and the rank correlations
of the learned difficulty with the known one join the table). The comparison writes, under ``--output``:

- ``comparison.json``: the settings; a later invocation with other settings is refused;
- ``results/<policy>/seed_<s>.json``: one file per finished run (a rerun skips it);
- ``tensorboard/<policy>/seed_<s>``: the run's TensorBoard logs, with its hyperparameters and final
  metrics in the HParams tab and ``test/acc_by_sample_passes`` (test accuracy with
  ``step = cumulative sample passes``), so curricula with different epoch lengths line up;
- ``summary.md`` and ``summary.csv``: per policy, final and best accuracy (mean ± std over seeds),
  sample passes and wall-clock, as ratios of ``full`` when it is among the policies, and the recipe's
  extra metrics;
- ``accuracy_vs_passes.png``: accuracy against sample passes, one line per policy.

The package's parts: `settings` (the recipes and the invocation's options), `cli` (the command line),
`runner` (the runs) and `report` (the summary, the CSV and the figure). Each recipe's data module is a
`lightning_curricula.recipes.interface.RecipeDataModule`: the runner reads its sizes, its bound policy
and its final metrics through that interface only.
"""

from lightning_curricula.recipes.compare.cli import main, parse_args
from lightning_curricula.recipes.compare.report import PolicySummary, RunResult, accuracy_figure, summarize
from lightning_curricula.recipes.compare.runner import run_comparison
from lightning_curricula.recipes.compare.settings import (
    DEFAULT_POLICIES,
    RECIPES,
    CompareOptions,
    ComparisonMismatchError,
    PolicySettingsError,
    Recipe,
    available_policies,
)

__all__ = [
    "DEFAULT_POLICIES",
    "RECIPES",
    "CompareOptions",
    "ComparisonMismatchError",
    "PolicySettingsError",
    "PolicySummary",
    "Recipe",
    "RunResult",
    "accuracy_figure",
    "available_policies",
    "main",
    "parse_args",
    "run_comparison",
    "summarize",
]

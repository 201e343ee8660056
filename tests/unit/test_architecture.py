"""The package's shape: one subpackage per stage of the data flow, lower stages never importing higher ones.

Reads every module's imports from its source (type-only imports under ``TYPE_CHECKING`` included) and
checks the rules of ``docs/architecture.md``: the stage order, and no import circle between files.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lightning_curricula

PACKAGE = Path(lightning_curricula.__file__).parent
#: Lowest first: a module may import its own stage and the stages before it.
STAGES = ("distributed", "data", "tracking", "policies", "step")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, at any depth of the file (function bodies, TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            # `from package import name` imports the submodule `package.name` when there is one, else the package.
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [name if name in MODULES else node.module for name in submodules]
        else:
            continue
        found.update(name for name in names if name in MODULES)
    return found


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _stage(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] not in STAGES:
        return len(STAGES)  # the top-level package re-exports everything
    return STAGES.index(parts[1])


def test_every_module_belongs_to_a_stage():
    loose = [name for name in MODULES if name.count(".") == 1 and name.split(".")[1] not in STAGES]
    assert loose == [], f"modules outside the stage subpackages: {loose}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_later_stage(module):
    later = sorted(other for other in GRAPH[module] if _stage(other) > _stage(module))
    assert later == [], f"{module} (stage {STAGES[_stage(module)]}) imports later stages: {later}"


def test_no_import_circle_between_files():
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            circle = path[path.index(module) :] + (module,)
            raise AssertionError(f"import circle: {' -> '.join(circle)}")
        if module in done:
            return
        for other in sorted(GRAPH[module]):
            visit(other, (*path, module))
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, ())


def test_the_checker_sees_type_only_and_nested_imports(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from lightning_curricula.step import OnlineBatchSelection\n"
        "def f():\n    import lightning_curricula.tracking.signals\n"
    )
    assert _imports(source) == {"lightning_curricula.step", "lightning_curricula.tracking.signals"}


def test_every_subpackage_is_in_the_distribution():
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages <= listed, f"missing from pyproject.toml's packages: {sorted(packages - listed)}"

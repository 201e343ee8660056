"""Griffe extension for the docs build: read ``Example:`` docstring sections as examples.

Griffe's Google parser knows ``Examples:`` as the examples section but reads the singular
``Example:`` (also valid Google style, and what this library's docstrings use) as an admonition,
so the ``>>>`` lines would render as Markdown quotes. This rewrites the section title before the
docstring is parsed. Used only by ``mkdocs.yml``; the library does not import it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_SECTION = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section titles to ``Examples:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: D102
        docstring = obj.docstring
        if docstring is not None and "Example:" in docstring.value:
            docstring.value = _EXAMPLE_SECTION.sub(r"\1Examples:", docstring.value)

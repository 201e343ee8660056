"""Pacing functions: the fraction of the data a curriculum makes available at training progress ``t``.

Hacohen & Weinshall (2019) introduced pacing functions for curricula; Wu et al. (2021, "When do
curricula work?") compared their families. Each function here maps progress ``t in [0, 1]`` to a
fraction in ``[start, 1]`` that grows from ``start`` at ``t = 0`` to ``1`` at ``t = saturation`` and
stays there.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

__all__ = ["PACING_FUNCTIONS", "Pacing", "pacing_function", "training_progress"]

Pacing = Callable[[float], float]


def training_progress(epoch: int, num_epochs: int) -> float:
    """Progress ``t`` of ``epoch`` in a run of ``num_epochs``: 0 at the first epoch, 1 at the last.

    ``epoch / (num_epochs - 1)``, so a pacing with ``saturation=1.0`` trains the last epoch on all
    data (``epoch / num_epochs`` never reaches 1). A one-epoch run, and any epoch past the last, is at
    progress 1.

    Examples:
        >>> [training_progress(epoch, 5) for epoch in range(5)]
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if num_epochs < 1 or epoch < 0:
        raise ValueError(f"epoch must be >= 0 and num_epochs >= 1, got {epoch!r} and {num_epochs!r}.")
    return min(epoch / (num_epochs - 1), 1.0) if num_epochs > 1 else 1.0


def _linear(x: float) -> float:
    return x


def _root(x: float) -> float:
    return math.sqrt(x)


def _exponential(x: float) -> float:
    return (math.exp(5 * x) - 1) / (math.exp(5) - 1)


def _step(x: float) -> float:
    return math.floor(4 * x) / 4


#: Shapes of growth from 0 to 1 on ``x in [0, 1]``; ``geometric`` is handled apart (it needs ``start``).
PACING_FUNCTIONS: dict[str, Callable[[float], float]] = {
    "linear": _linear,
    "root": _root,
    "exponential": _exponential,
    "step": _step,
    "geometric": _linear,
}


def pacing_function(name: str | Pacing, *, start: float = 0.2, saturation: float = 0.8) -> Pacing:
    """A pacing function ``t -> fraction of data``, by name or from a user callable.

    Named shapes, with ``x = min(t / saturation, 1)``:

    - ``linear``: ``start + (1 - start) x``;
    - ``root``: ``start + (1 - start) sqrt(x)`` (fast early growth);
    - ``geometric``: ``start ** (1 - x)`` (a constant factor per unit of progress, as the fixed
      exponential pacing of Hacohen & Weinshall);
    - ``exponential``: ``start + (1 - start) (e^{5x} - 1) / (e^5 - 1)`` (slow early growth);
    - ``step``: ``start + (1 - start) floor(4x) / 4`` (four equal steps).

    A callable is used as is; its values are clipped to ``[0, 1]`` by the policy.

    Args:
        name: one of `PACING_FUNCTIONS`, or a callable of progress.
        start: fraction available at ``t = 0``, in ``(0, 1]``.
        saturation: progress at which all data is available, in ``(0, 1]``.

    Examples:
        >>> pace = pacing_function("linear", start=0.2, saturation=0.5)
        >>> [round(pace(t), 2) for t in (0.0, 0.25, 0.5, 1.0)]
        [0.2, 0.6, 1.0, 1.0]
    """
    if callable(name):
        return name
    if name not in PACING_FUNCTIONS:
        raise ValueError(f"Unknown pacing {name!r}; choose one of {sorted(PACING_FUNCTIONS)} or pass a callable.")
    if not 0.0 < start <= 1.0:
        raise ValueError(f"start must be in (0, 1], got {start!r}.")
    if not 0.0 < saturation <= 1.0:
        raise ValueError(f"saturation must be in (0, 1], got {saturation!r}.")
    # A partial of a module-level function, not a closure: policies holding it pickle (ddp_spawn, workers).
    return functools.partial(_pace, name=name, start=start, saturation=saturation)


def _pace(t: float, *, name: str, start: float, saturation: float) -> float:
    x = min(max(t, 0.0) / saturation, 1.0)
    if name == "geometric":
        return float(start ** (1.0 - x))
    return start + (1.0 - start) * PACING_FUNCTIONS[name](x)

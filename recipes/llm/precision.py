"""The training precision the LLM recipe picks when none is given: from the device and, on a CPU, its bf16 instructions.

bf16 autocast on a CPU is fast only where the CPU computes bf16 matrix products natively: AMX tiles
(``amx_bf16``, Sapphire Rapids and later) or AVX-512-BF16 (``avx512_bf16``, Cooper Lake, Zen 4 and
later). Elsewhere every bf16 product is converted to fp32 and back, which is slower than fp32 alone.
`choose_precision` decides by those flags alone, not by a timing, so the same machine always makes the
same choice, and it says why, for the run's log. Measured end to end (docs/benchmarks/llm.md): on an
AMD EPYC with AVX-512-BF16, SmolLM2-135M trained 1.28x as fast in bf16-mixed, with the loss of the
first 50 steps within 5.4% step by step; on a Xeon with AMX, level with fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["BF16_FLAGS", "choose_precision", "cpu_bf16_flags"]

#: The CPU flags (as ``/proc/cpuinfo`` names them) under which bf16 matrix products run natively.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    r"""The `BF16_FLAGS` this CPU has, read from ``cpuinfo``; empty where the file is missing (not Linux).

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as file:
        ...     _ = file.write("flags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
        >>> cpu_bf16_flags(file.name)
        ['avx512_bf16']
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return []
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return [flag for flag in BF16_FLAGS if flag in flags]


def choose_precision(accelerator: str, *, cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, str]:
    """``(precision, reason)``: the Lightning precision for ``accelerator`` (``"cpu"``, ``"gpu"``, ``"auto"``).

    On a GPU: ``bf16-mixed`` where it supports bf16, else ``16-mixed``. On a CPU: ``bf16-mixed`` when it
    has a `BF16_FLAGS` flag, else ``32-true``.

    Example:
        >>> choose_precision("cpu", cpuinfo="/nonexistent")
        ('32-true', 'this CPU has none of amx_bf16, avx512_bf16: bf16 would be converted to fp32 for every product')
    """
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"{torch.cuda.get_device_name()} supports bf16"
        return "16-mixed", f"{torch.cuda.get_device_name()} lacks bf16"
    flags = cpu_bf16_flags(cpuinfo)
    if not flags:
        return (
            "32-true",
            f"this CPU has none of {', '.join(BF16_FLAGS)}: bf16 would be converted to fp32 for every product",
        )
    return "bf16-mixed", f"this CPU has {', '.join(flags)}: bf16 matrix products run natively"

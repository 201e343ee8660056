"""Test-wide settings: gloo on loopback, quiet Lightning, `helpers` importable, the CPU kernels in the header."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# DDP tests run two CPU processes with gloo; without this gloo may pick an interface that is down.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

# `from helpers import ...` from any test folder (and from spawned DDP workers, which inherit sys.path).
_TESTS = str(Path(__file__).parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import lightning.pytorch  # noqa: E402, F401 - it sets its loggers' levels on import; override them after

# Lightning's info lines (GPU available, litmodels tips, "max_epochs reached") only add noise to test output.
for _name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def pytest_report_header() -> str:
    """Which CPU kernels ran: set ``ATEN_CPU_CAPABILITY`` (default, avx2, avx512) to run the suite on another set."""
    import torch

    return f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}"

"""``python -m lightning_curricula.recipes.compare``: the same as ``lightning-curricula``."""

import sys

from lightning_curricula.recipes.compare.cli import main

sys.exit(main())

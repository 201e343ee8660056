"""The vision recipe: ``python -m lightning_curricula.recipes.vision fit --config ...`` (see its `cli` module)."""

from lightning_curricula.recipes.vision.cli import main

if __name__ == "__main__":
    main()

"""``python -m lightning_curricula.recipes.llm fit --config recipes/llm/configs/curriculum.yaml``."""

from lightning_curricula.recipes.llm.cli import main

if __name__ == "__main__":
    main()

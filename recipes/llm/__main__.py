"""``python -m recipes.llm fit --config recipes/llm/configs/curriculum.yaml``."""

from recipes.llm.cli import main

if __name__ == "__main__":
    main()

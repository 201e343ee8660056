"""``python -m recipes.vision fit --config recipes/vision/configs/infobatch.yaml``: see `recipes.vision.cli`."""

from recipes.vision.cli import main

if __name__ == "__main__":
    main()

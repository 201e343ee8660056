"""Vision recipes: offline image datasets and small models for curriculum and pruning experiments."""

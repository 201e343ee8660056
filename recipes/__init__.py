"""Recipes for `lightning_curricula`: end-to-end examples built only on its public API."""

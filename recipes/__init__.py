"""Runnable training recipes: `python -m recipes.crystal --mesh 8x1`, `recipes.amber`, `recipes.mobillama`."""

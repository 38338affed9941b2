"""Recipes (docs/recipes.md): YAML files with dotted command-line overrides, read into typed,
validated settings; any bad key, type or value is one line naming it (RecipeError, exit 2).

- reading.py: strict YAML, overrides, `base:` inheritance, validation into a schema;
- schema.py: the recipe of `mlit.train` (model, data, train and its stages).

The zoo's and the shape sweep's recipes (mlit/zoo/recipe.py, mlit/shape/recipe.py) build on
these. Above the model (a recipe names a model), below everything that runs one.
"""

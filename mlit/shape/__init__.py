"""`python -m mlit.shape` (docs/shape.md): compute-optimal mLiT shapes, a SoViT star sweep
(recipe.py, plan.py) trained by mlit.population, and its scaling-law fits (fit.py, report.py).
A command: nothing imports it.
"""

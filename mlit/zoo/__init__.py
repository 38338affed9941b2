"""`python -m mlit.zoo` (docs/zoo.md): model zoos as the ViT model-zoo paper grows them, on
mLiT: the zoo's recipe and grid (recipe.py, plan.py), trained by mlit.population, and their
analysis (analysis.py, stats.py, mother.py, report.py). A command: nothing imports it.
"""

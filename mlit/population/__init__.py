"""Populations of training runs, planned and trained as one: what the model zoo (mlit/zoo)
and the shape sweep (mlit/shape) share, so neither command imports the other.

- plan.py: PlannedRun (name, folder, stage, factors, recipe) and shards;
- layout.py: a run's folder on disk and its status (running, done, failed, ...);
- runner.py: train the runs through StageRun, skipping what is done, resuming the rest;
- ray_launcher.py: the same on a Ray cluster;
- launch.py: either, as the command line says, and the exit status of the whole.
"""

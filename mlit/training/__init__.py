"""The training runner (docs/training.md): one stage, then a whole recipe in its run folder.

- engine.py: device and precision, the training step, the evaluation loop;
- optim.py: AdamW/SGD with layer-wise decay, the warm-up and cosine schedule;
- stage.py: StageRun, the one loop every command trains with (`run_epoch`), what its
  checkpoints hold, and its logs;
- stage_files.py: a stage's files (its checkpoint, the zoo's epoch checkpoints, its lines
  of metrics.jsonl);
- schedule.py: what is due after an epoch (evaluate, k-NN, checkpoint), a pure function;
- run_folder.py: the run folder of mlit.train and the rules for using it again;
- resume.py: what a resumed run may change;
- recipe_run.py: every stage of a recipe in order, under the folder's lock.
"""

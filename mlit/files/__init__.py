"""The files the project writes and reads back: whole or absent after any crash, checked when
they are read, each problem one line naming the file.

- atomic.py: writes through a synced temporary file and a rename; a full disk as DiskFull;
- jsonl.py: JSON-lines logs (metrics.jsonl, result.json); DamagedFile;
- paths.py: output paths checked before any work;
- lock.py: one writer per folder (flock);
- checkpoint.py: run checkpoints (torch.save, weights_only loading, RNG state);
- tensorboard.py: TensorBoard whose disk errors come back as one DiskFull;
- records.py: what each file holds, validated on reading (pydantic);
- modelfile.py: a checkpoint's or an export's model, `mlit.load`, the safetensors export;
- weights.py: fitting weights to a model, with the first mismatch in words.
"""

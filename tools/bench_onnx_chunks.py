"""Why the exported graph runs a batch in chunks, and why of 4 images: ONNX Runtime images/s
of an mLiT's graph (random weights) run whole at several batch sizes, then at batch 64 chunked
by 1, 4, 8 and 16 images (mlit/inference/onnx_chunks.py), side by side in one run.

    python tools/bench_onnx_chunks.py [--models mlit_xxs,mlit_s] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mlit
from mlit.cli import model_names, number
from mlit.inference.onnx_chunks import CHUNK, chunked
from mlit.inference.onnx_graph import lean_graph
from mlit.inference.onnx_runtime import session

BATCHES = (1, 2, 4, 8, 16, 32, 64)
CHUNKS = (1, 4, 8, 16)


def images_s(runner, batch: int, rounds: int = 3) -> float:
    x = np.random.default_rng(batch).standard_normal((batch, 3, 36, 36), dtype=np.float32)
    runner.run(None, {"images": x})
    runs = max(2, 128 // batch)
    best = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(runs):
            runner.run(None, {"images": x})
        best.append(batch * runs / (time.perf_counter() - start))
    return statistics.median(best)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=model_names, default="mlit_xxs,mlit_s")
    parser.add_argument("--threads", type=number(int, 1), default=1)
    args = parser.parse_args(argv)
    import onnx  # here: --help and a wrong flag answer without it
    print(f"ONNX Runtime, fp32, {args.threads} thread(s), images/s (median of 3 stretches); "
          f"the export chunks by {CHUNK}")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            torch.manual_seed(0)
            plain = lean_graph(mlit.create_model(name).eval())
            path = Path(folder) / f"{name}.onnx"
            onnx.save(plain, str(path))
            runner = session(path, threads=args.threads)
            whole = {b: images_s(runner, b) for b in BATCHES}
            print(f"{name} whole batch: " + ", ".join(f"b{b} {v:.0f}" for b, v in whole.items()))
            found = {}
            for chunk in CHUNKS:
                onnx.save(chunked(plain, chunk), str(path))
                found[chunk] = images_s(session(path, threads=args.threads), 64)
            print(f"{name} batch 64 in chunks: " + ", ".join(
                f"of {c} {v:.0f} ({v / whole[64]:.2f}x)" for c, v in found.items()))


if __name__ == "__main__":
    main()

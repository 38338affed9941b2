"""Export a checkpoint's weights as safetensors, the format timm and the Hugging Face
ecosystem load, with everything needed to rebuild the model in the file's metadata.

    python -m mlit.export runs/mmlit_s/finetune/checkpoint.pt mmlit_s.safetensors
    python -m mlit.export runs/mmlit_s/pretrain/checkpoint.pt encoder.safetensors --encoder-only
    python -m mlit.export runs/mmlit_s/finetune/checkpoint.pt mmlit_s.onnx [--int8]

A .onnx target writes one self-contained ONNX file for CPUs and edge runtimes, checked
against PyTorch before it is kept (mlit/inference/onnx_export.py, docs/deploy.md).

Metadata (all strings): format "mlit", kind (pretrain, simclr, finetune, supervised or
encoder), model_name, model_config (JSON of every MLiTConfig field) and, when the checkpoint
belongs to a run, recipe (its resolved recipe as JSON, so `mlit.eval` knows the dataset).
Tensors keep their state-dict names; an encoder-only file holds the encoder's own names
(`patch_embed.proj.weight`, `layers.0.attn.q_proj.weight`, ...). `mlit.load(path)` rebuilds the
model from the file alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlit.cli import run_command
from mlit.errors import BadInput
from mlit.files import modelfile
from mlit.files.paths import output_file


def export(source: str | Path, out: str | Path, encoder_only: bool = False) -> Path:
    """A .safetensors export of the model file at `source` (modelfile.write_safetensors)."""
    mf = modelfile.read(source)
    return modelfile.write_safetensors(mf, output_file(out, "the output file"), encoder_only)


def write_onnx(args) -> int:
    from mlit.inference import onnx_export
    from mlit.inference.evaluation import test_loader

    onnx_export.deploy_modules()  # what to install, before any work
    mf = modelfile.read(args.checkpoint)
    out = output_file(args.out, "the output file")
    loader = test_loader(mf)  # real test images for the checks, None without the dataset
    report = onnx_export.export_onnx(mf, out, args.int8, args.encoder_only, loader)
    worst = max(r["max_abs_diff"] for r in report["parity"])
    sources = sorted({r["images"] for r in report["parity"]})
    batches = ", ".join(map(str, onnx_export.BATCHES[:-1])) + f" and {onnx_export.BATCHES[-1]}"
    print(f"wrote {out}: {mf.name} ({'encoder' if args.encoder_only else mf.kind}), ONNX "
          f"opset {onnx_export.OPSET}{', int8' if args.int8 else ''}, "
          f"{out.stat().st_size / 2**20:.2f} MiB")
    output = "feature" if args.encoder_only else "logit"  # an encoder has no classes
    agreed = ("the same experts per untied token" if args.encoder_only else
              "the same classes and the same experts per untied token")
    print(f"checked{' the fp32 graph it was quantised from' if args.int8 else ''}: "
          f"onnx.checker full check; ONNX Runtime against PyTorch on "
          f"{' and '.join(sources)} images at batch {batches}: largest {output} difference "
          f"{worst:.1e}, {agreed}")
    if "int8" in report:
        rows = report["int8"]
        agreement = [r["same_top1"] for r in rows if "same_top1" in r]
        print(f"checked the int8 file: onnx.checker full check; ONNX Runtime on "
              f"{' and '.join(sorted({r['images'] for r in rows}))} images at batch {batches}: "
              f"largest {output} difference from the fp32 file "
              f"{max(r['max_abs_diff'] for r in rows):.1e}"
              + (f", the fp32 file's top-1 class on {100 * min(agreement):.1f}% of the images "
                 "or more" if agreement else ""))
    if "top1" in report:
        fp32, int8 = report["top1"]["fp32"], report["top1"]["int8"]
        print(f"test top-1: int8 {int8:.4f}, fp32 {fp32:.4f}")
        if int8 < fp32 - onnx_export.INT8_DROP:
            print(f"warning: the int8 file's test top-1 {int8:.4f} is more than "
                  f"{onnx_export.INT8_DROP * 100:g} point below fp32's {fp32:.4f}",
                  file=sys.stderr)
    elif args.int8 and args.encoder_only:
        print("test top-1 not measured: an encoder alone has no classes to score")
    elif args.int8:
        print("test top-1 not measured: the run's test split is not on this machine")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlit.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("out", help="the .safetensors or .onnx file to write")
    parser.add_argument("--encoder-only", action="store_true",
                        help="the encoder's weights alone (a backbone to fine-tune)")
    parser.add_argument("--int8", action="store_true",
                        help=".onnx: ONNX Runtime's dynamic int8 quantisation of the matrix "
                             "products, its test top-1 measured beside fp32's")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run_command("mlit.export", lambda: write(args))


def write(args) -> int:
    if args.out.endswith(".onnx"):
        return write_onnx(args)
    if args.int8:
        raise BadInput("--int8: only an .onnx export is quantised")
    if not args.out.endswith(".safetensors"):
        raise BadInput(f"{args.out}: the output must end in .safetensors or .onnx")
    path = export(args.checkpoint, args.out, args.encoder_only)
    mf = modelfile.read(path)
    n = sum(t.numel() for t in mf.state.values())
    print(f"wrote {path}: {mf.name} ({mf.kind}), {len(mf.state)} tensors, {n:,} values")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Parameters per model and part against the paper (docs/architecture.md, "Parameter count"),
with the forward FLOPs per image and the parameters active per token.

    python tools/param_count.py          # a table
    python tools/param_count.py --json   # {"mlit_s": {"encoder": N, "classifier": N,
                                         #   "decoder": N, "flops": F, "active_params": A}, ...}

classifier = encoder + a 100-class linear head; decoder = the MAE decoder alone; flops = the
classifier's forward FLOPs for one 36x36 image, counted by torch.utils.flop_counter (a
multiply-add is 2 FLOPs; mlit/flops.py); active_params = the classifier's parameters one token
uses (k of E experts per MoE layer).
"""

from __future__ import annotations

import argparse
import json

import mlit
from mlit.flops import active_params, forward_flops

PAPER = {  # millions: encoder (Table 1), classifier with CIFAR-100 head (Table 7), decoder (Table 2)
    "mlit_s": (2.36, 2.38, 0.34),
    "mlit_xs": (1.21, 1.22, 0.34),
    "mlit_xxs": (0.66, 0.67, 0.34),
}


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def count(name: str, **overrides) -> dict[str, int]:
    classifier = mlit.create_model(name, num_classes=100, **overrides)
    decoder = mlit.create_mae(name, **overrides).decoder
    cfg = classifier.cfg
    return {"encoder": numel(classifier.encoder), "classifier": numel(classifier),
            "decoder": numel(decoder), "flops": round(forward_flops(cfg)),
            "active_params": active_params(cfg)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    counts = {name: count(name) for name in PAPER}
    if args.json:
        print(json.dumps(counts))
        return
    print(f"{'model':<9} {'part':<11} {'params':>10} {'millions':>9} {'paper':>6}")
    for name, parts in counts.items():
        for part, paper in zip(("encoder", "classifier", "decoder"), PAPER[name]):
            n = parts[part]
            print(f"{name:<9} {part:<11} {n:>10,} {n / 1e6:>9.3f} {paper:>6.2f}")
    print(f"\n{'model':<9} {'forward MFLOPs/image':>21} {'active params/token':>20}")
    for name, parts in counts.items():
        print(f"{name:<9} {parts['flops'] / 1e6:>21.1f} {parts['active_params']:>20,}")


if __name__ == "__main__":
    main()

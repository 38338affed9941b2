"""Parameters per model and part, against the paper (SPEC section 3).

    python tools/param_count.py          # a table
    python tools/param_count.py --json   # {"mlit_s": {"encoder": N, "classifier": N, "decoder": N}, ...}

classifier = encoder + a 100-class linear head; decoder = the MAE decoder alone.
"""

from __future__ import annotations

import argparse
import json

import mlit

PAPER = {  # millions: encoder (Table 1), classifier with CIFAR-100 head (Table 7), decoder (Table 2)
    "mlit_s": (2.36, 2.38, 0.34),
    "mlit_xs": (1.21, 1.22, 0.34),
    "mlit_xxs": (0.66, 0.67, 0.34),
}


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def count(name: str) -> dict[str, int]:
    classifier = mlit.create_model(name, num_classes=100)
    decoder = mlit.create_mae(name).decoder
    return {"encoder": numel(classifier.encoder), "classifier": numel(classifier),
            "decoder": numel(decoder)}


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
        for (part, n), paper in zip(parts.items(), PAPER[name]):
            print(f"{name:<9} {part:<11} {n:>10,} {n / 1e6:>9.3f} {paper:>6.2f}")


if __name__ == "__main__":
    main()

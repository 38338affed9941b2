"""Parameters per model and part against the paper (docs/architecture.md, "Parameter count"),
with the forward FLOPs per image and the parameters active per token.

    python tools/param_count.py          # a table
    python tools/param_count.py --json   # {"mlit_s": {"encoder": N, "classifier": N,
                                         #   "decoder": N, "flops": F, "active_params": A}, ...}
    python tools/param_count.py --shared v_w2,w_w2,w_v   # Table 9's arrangements side by side

classifier = encoder + a 100-class linear head; decoder = the MAE decoder alone; flops = the
classifier's forward FLOPs for one 36x36 image, its matrix products in closed form (a
multiply-add is 2 FLOPs; mlit/model/flops.py, held to torch.utils.flop_counter's count by the
tests); active_params = the classifier's parameters one token
uses (k of E experts per MoE layer).
"""

from __future__ import annotations

import argparse
import json

import mlit
from mlit.cli import names_from
from mlit.kernels.arrangements import SHARED
from mlit.model.flops import active_params, forward_flops

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
    parser.add_argument("--shared", default="v_w2", type=names_from(SHARED, "arrangement"),
                        help="which projections the experts share: v_w2 (the paper's), w_w2, "
                             "w_v, or a comma list")
    args = parser.parse_args(argv)
    arrangements = args.shared
    if len(arrangements) > 1:
        table9(arrangements, args.json)
        return
    counts = {name: count(name, shared=arrangements[0]) for name in PAPER}
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


def table9(arrangements: list[str], as_json: bool) -> None:
    """Counts per sharing arrangement: {arrangement: {model: counts}}."""
    counts = {shared: {name: count(name, shared=shared) for name in PAPER}
              for shared in arrangements}
    if as_json:
        print(json.dumps(counts))
        return
    print(f"{'model':<9} {'shared':<7} {'encoder':>10} {'classifier':>11} {'decoder':>8} "
          f"{'active/token':>13} {'MFLOPs/image':>13}")
    for name in PAPER:
        for shared in arrangements:
            c = counts[shared][name]
            print(f"{name:<9} {shared:<7} {c['encoder']:>10,} {c['classifier']:>11,} "
                  f"{c['decoder']:>8,} {c['active_params']:>13,} {c['flops'] / 1e6:>13.1f}")


if __name__ == "__main__":
    main()

"""Training curves from the per-epoch logs of one or more runs, as PNG files.

    python -m mlit.plot runs/mmlit_s runs/mmlit_xs runs/mmlit_xxs --out figures/

Each RUN_DIR is a run folder of `mlit.train` (metrics.jsonl) or a zoo model folder
(result.json). Written into --out (default: RUN_DIR/plots for one run, ./plots for several):
- pretraining_loss.png: the pre-training loss against the epoch on log-log axes, every run on
  one plot (the paper's Figure 6: mmLiT's loss falls about linearly there);
- accuracy.png and loss.png: the classifier's test accuracy (train accuracy dashed, where the
  run measured it) and its training and test loss, against the epoch;
- lr.png: the learning rate at the end of each epoch, every stage.
A figure is skipped when no run has what it shows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlit.cli import run_command
from mlit.errors import BadInput
from mlit.files.paths import output_folder
from mlit.files.records import read_epochs
from mlit.inference.figures import pyplot
from mlit.model.stage_kinds import CLASSIFIERS, PRETRAINING


def read_run(folder: Path) -> list[dict]:
    """A run's epochs, every line checked (mlit.files.records.EpochRecord)."""
    for name in ("metrics.jsonl", "result.json"):
        if (folder / name).is_file():
            return read_epochs(folder / name)
    raise BadInput(f"{folder}: no metrics.jsonl or result.json (not a run folder)")


def series(records: list[dict], stages, key: str) -> tuple[list[int], list[float]]:
    points = [(r["epoch"], r[key]) for r in records
              if r.get("stage") in stages and r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def figure(path: Path, runs: dict[str, list[dict]], lines, title: str, ylabel: str,
           loglog: bool = False) -> bool:
    """One PNG with a line per (run, stages, key, style, label) of `lines`; False if empty."""
    plt = pyplot()
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    drawn = 0
    for color, (name, records) in enumerate(runs.items()):
        for stages, key, style, label in lines:
            x, y = series(records, stages, key)
            if loglog:  # log axes cannot show epoch 0 (a zoo's untrained model)
                keep = [i for i in range(len(x)) if x[i] > 0 and y[i] > 0]
                x, y = [x[i] for i in keep], [y[i] for i in keep]
            if x:
                ax.plot(x, y, style, color=f"C{color % 10}", label=f"{name} {label}".strip() or key,
                        lw=1.2, ms=4)
                drawn += 1
    if drawn:
        if loglog:
            ax.set_xscale("log")
            ax.set_yscale("log")
        else:  # epochs are whole numbers
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return bool(drawn)


def plot_runs(runs: dict[str, list[dict]], out: Path) -> list[Path]:
    """The figures of `runs` (name -> epoch records) into `out`; the paths written."""
    if len(runs) == 1:
        runs = {"": next(iter(runs.values()))}
    out.mkdir(parents=True, exist_ok=True)
    classifier = CLASSIFIERS
    every = PRETRAINING + classifier
    made = []
    for name, lines, title, ylabel, loglog in [
        ("pretraining_loss.png", [(PRETRAINING, "train_loss", "-", "train"),
                                  (PRETRAINING, "test_loss", "o--", "test")],
         "Pre-training loss (log-log, Figure 6)", "loss", True),
        ("accuracy.png", [(classifier, "test_acc", "-o", "test"),
                          (classifier, "train_acc", "--", "train (eval mode)")],
         "Classification accuracy", "top-1 accuracy", False),
        ("loss.png", [(classifier, "train_loss", "-", "train"),
                      (classifier, "test_loss", "o--", "test")],
         "Classification loss", "loss", False),
        ("lr.png", [((stage,), "train_lr", "--" if stage in PRETRAINING else "-", stage)
                    for stage in every],  # a line a stage: each has its own schedule
         "Learning rate (end of epoch)", "learning rate", False),
    ]:
        if figure(out / name, runs, lines, title, ylabel, loglog):
            made.append(out / name)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlit.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (metrics.jsonl or result.json)")
    parser.add_argument("--out", help="default RUN_DIR/plots (one run) or ./plots")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run_command("mlit.plot", lambda: plot(args))


def plot(args) -> int:
    folders = [Path(r) for r in args.runs]
    runs = {str(f): read_run(f) for f in folders}  # checked before anything is written
    out = Path(args.out) if args.out else (folders[0] / "plots" if len(folders) == 1
                                           else Path("plots"))
    made = plot_runs(runs, output_folder(out, "--out"))
    if not made:
        raise BadInput("the runs have no epoch logged yet")
    print("wrote " + ", ".join(str(p) for p in made))
    return 0


if __name__ == "__main__":
    sys.exit(main())

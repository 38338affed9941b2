"""The zoo analysis as a Markdown report with PNG figures (matplotlib) and a JSON file."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.ticker

from mlit.inference.figures import pyplot

plt = pyplot()  # this module is imported when a report is written (mlit/zoo/__main__.py)


def fmt(cell, scale: float = 1.0, digits: int = 2) -> str:
    if cell is None:
        return "-"
    return f"{cell['mean'] * scale:.{digits}f} ± {cell['std'] * scale:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def scatter(path: Path, x, y, colors, xlabel: str, ylabel: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for label in sorted(set(colors)):
        idx = [i for i, c in enumerate(colors) if c == label]
        ax.scatter([x[i] for i in idx], [y[i] for i in idx], label=label, s=18)
    lo, hi = min(x + y), max(x + y)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(result: dict, out: Path) -> list[str]:
    made = []
    avg = result["epoch_averaging"]
    if avg:
        scatter(out / "epoch_averaging.png", [r["best_individual_acc"] for r in avg],
                [r["averaged_acc"] for r in avg], [r["model"].split("/")[1] for r in avg],
                "best single epoch (test acc)", f"average of last {result['window']} epochs",
                "Epoch averaging (Fig. 2a)")
        made.append("epoch_averaging.png")
    soups = [r for r in result["soups"] if "soup_acc" in r]
    if soups:
        scatter(out / "soups.png", [r["max_individual_acc"] for r in soups],
                [r["soup_acc"] for r in soups], [r["varied"] for r in soups],
                "best ingredient (test acc)", "uniform soup", "Model soups (Fig. 2b)")
        made.append("soups.png")
    longitudinal = result["longitudinal"]
    if longitudinal:
        epochs = [int(e) for e in longitudinal]
        fig, ax = plt.subplots(figsize=(6, 4))
        for series, color in (("individual", "tab:gray"), ("averaged", "tab:blue")):
            cells = [longitudinal[e][series] for e in longitudinal]
            ax.plot(epochs, [c["mean"] for c in cells], color=color, label=f"{series} (mean)")
            ax.fill_between(epochs, [c["min"] for c in cells], [c["max"] for c in cells],
                            color=color, alpha=0.2, label=f"{series} (min-max)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(xlabel="fine-tuning epoch", ylabel="test accuracy",
               title=f"Longitudinal averaging over {result['window']} epochs (Fig. 3)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "longitudinal.png", dpi=120)
        plt.close(fig)
        made.append("longitudinal.png")
    return made


def markdown(result: dict, images: list[str]) -> str:
    t1 = [[k, str(r["models"]), fmt(r["accuracy"], 100), fmt(r["skewness"], 1, 3),
           fmt(r["kurtosis"]), fmt(r["l2_norm"], 1, 1), fmt(r["within_cluster_l2"], 1, 1),
           fmt(r["between_cluster_l2"], 1, 1)] for k, r in result["table1"].items()]
    t2 = [[k, str(r["models"]), fmt(r["accuracy"], 100), fmt(r["generalisation_gap"], 100),
           fmt(r["agreement"], 100), fmt(r["skewness"], 1, 3), fmt(r["kurtosis"]),
           fmt(r["l2_norm"], 1, 1), fmt(r["l2_to_ancestor"], 1, 1)]
          for k, r in result["table2"].items()]
    t6 = [[r["pretraining"], r["optimizer"], r["head"], f"{r['lr']:g}", str(r["models"]),
           f"{100 * r['min']:.2f}", f"{100 * r['max']:.2f}", fmt(r["accuracy"], 100),
           fmt(r["generalisation_gap"], 100), fmt(r["agreement"], 100)]
          for r in result["table6"]]
    greedy = [[r["backbone"], r["head"], f"{len(r['ingredients'])}/{r['candidates']}",
               f"{100 * r['soup_acc']:.2f}", f"{100 * r['best_individual_acc']:.2f}"]
              for r in result["greedy_soups"]]
    avg = result["epoch_averaging"]
    gains = [r["gain"] for r in avg]
    refined = result["refined"]
    parts = [
        f"# Zoo analysis: {result['zoo']}",
        f"{result['backbones']} backbones, {result['finetunes']} fine-tunes"
        + (f"; {len(result['skipped_unfinished'])} unfinished runs left out"
           if result["skipped_unfinished"] else "") + ".",
        f"Refined zoo: the fine-tunes whose final test accuracy reaches {refined['min_acc']}: "
        f"{refined['kept']} of {refined['finished']} kept; every table of fine-tunes uses "
        "them (backbones are all kept)." if refined else "",
        "Weight statistics and L2 distances use every floating-point tensor of the encoder "
        "(`encoder.*`: patch and positional embeddings, attention, gates, experts, norms) as "
        "one vector; heads are left out. Skewness and excess kurtosis are the biased moment "
        "estimates (scipy's defaults). Accuracies are test-split fractions shown in %.",
        "## Backbones (Table 1)",
        table(["pre-training", "n", "accuracy", "skewness", "kurtosis", "L2 norm",
               "within cluster", "between cluster"], t1),
        "## Fine-tuned models by generating factor (Table 2)",
        table(["factor", "n", "accuracy", "gen. gap", "agreement", "skewness", "kurtosis",
               "L2 norm", "L2 to ancestor"], t2),
        "## Every factor jointly (Table 6)",
        "Head seeds and the backbones of a pre-training variant pooled; accuracies in %.",
        table(["pre-training", "optimizer", "head", "lr", "n", "min", "max", "μ ± σ",
               "gen. gap", "agreement"], t6),
        f"## Epoch averaging (last {result['window']} epochs)",
        f"Average gain over the best single epoch: {100 * sum(gains) / len(gains):+.2f} points;"
        f" better in {sum(g > 0 for g in gains)} of {len(gains)} models." if gains else "",
        "## Greedy soups",
        table(["backbone", "head", "ingredients", "soup acc", "best single"], greedy),
        "## Lineage recovery (MoTHeR, λ = " + f"{result['mother_lambda']}; Table 3)",
        mother_text(result),
        mother_table(result["mother"]),
        "## Figures",
        *[f"![{name}]({name})" for name in images],
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


EXPERIMENT_NAMES = {"epochs": "Epochs", "head_seed": "Seed", "lr": "LR", "head": "Cls. Head",
                    "optimizer": "Optimizer"}


def mother_table(rows: dict) -> str:
    """Laid out as the paper's Table 3: one column per experiment."""
    cols = list(EXPERIMENT_NAMES)
    cell = lambda e, f: f(rows[e]) if e in rows else "-"  # noqa: E731
    return table([""] + [EXPERIMENT_NAMES[e] for e in cols], [
        ["Acc."] + [cell(e, lambda r: f"{r['accuracy']:.4f}") for e in cols],
        ["F1"] + [cell(e, lambda r: f"{r['f1']:.4f}") for e in cols],
        ["children per backbone"] + [cell(e, lambda r: str(r["children"])) for e in cols],
        ["nodes / edges"] + [cell(e, lambda r: f"{r['models']} / {r['edges']}") for e in cols]])


def mother_text(result: dict) -> str:
    return (f"Every backbone gets the same number of descendants ({result['mother_children']} "
            "as in the paper, or as many as the zoo has): the fine-tunes that differ from the "
            "backbone's first one in the experiment's factor, each a chain of evenly spaced "
            "epoch checkpoints, so a factor with fewer values is padded with epochs. Nodes "
            "are the models given to MoTHeR (backbones included), edges the true "
            "parent-child pairs; '-' where the zoo does not vary the factor.")


def write_report(result: dict, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(result, indent=1) + "\n")
    images = figures(result, out)
    path = out / "report.md"
    path.write_text(markdown(result, images))
    return path

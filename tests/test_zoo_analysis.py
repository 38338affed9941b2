"""Zoo analyses: statistics, averaging and lineage recovery on synthetic populations with
known answers, then the whole report on a micro-zoo."""

import json

import numpy as np
import pytest
import scipy.stats
import torch
import yaml
from test_zoo import MICRO

from mlit.zoo import mother, stats
from mlit.zoo.__main__ import main
from mlit.zoo.analysis import ZooAnalysis


def test_weight_statistics_match_scipy():
    g = torch.Generator().manual_seed(0)
    state = {"encoder.a": torch.randn(50, 40, generator=g) ** 3,
             "encoder.b": torch.rand(300, generator=g),
             "encoder.count": torch.tensor(7),  # not floating point: left out
             "head.weight": torch.randn(10, 40, generator=g) * 100}  # not encoder: left out
    v = np.concatenate([state["encoder.a"].numpy().ravel(), state["encoder.b"].numpy()])
    got = stats.weight_stats(state)
    assert got["skewness"] == pytest.approx(scipy.stats.skew(v.astype(np.float64)), rel=1e-9)
    assert got["kurtosis"] == pytest.approx(scipy.stats.kurtosis(v.astype(np.float64)),
                                            rel=1e-9)
    assert got["l2_norm"] == pytest.approx(np.linalg.norm(v.astype(np.float64)), rel=1e-9)
    other = {k: t + 1 if t.is_floating_point() else t for k, t in state.items()}
    assert stats.l2_distance(state, other) == pytest.approx(len(v) ** 0.5, rel=1e-6)  # fp32 t + 1


def test_agreement():
    a = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    assert stats.agreement(a, a) == 1.0
    assert stats.agreement(a, torch.tensor([0, 1, 2, 3, 0, 0, 0, 0])) == 0.5


def test_average_of_identical_checkpoints_is_the_checkpoint():
    state = {"w": torch.randn(5, 3), "b": torch.randn(3).half(), "n": torch.tensor(4)}
    for copies in (2, 3, 7):
        avg = stats.average_states([state] * copies)
        assert all(torch.equal(avg[k], state[k]) and avg[k].dtype == state[k].dtype
                   for k in state)
    mid = stats.average_states([{"w": torch.zeros(2)}, {"w": torch.ones(2)}])
    assert torch.equal(mid["w"], torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="same architecture"):
        stats.average_states([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])


def planted_forest(kurtosis_falls: bool):
    """Two trees far apart: root -> a -> c, root -> b, each step a small move in weights.
    Distances alone cannot tell parent from child; kurtosis falls (or rises) along edges."""
    rng = np.random.default_rng(0)
    vectors, kurt, parents = [], [], []
    for center in (0.0, 100.0):
        root = len(vectors)
        base = center + rng.normal(size=64)
        a = base + rng.normal(scale=0.3, size=64)
        b = base + rng.normal(scale=0.3, size=64)
        c = a + rng.normal(scale=0.3, size=64)
        vectors += [base, a, b, c]
        kurt += [3.0, 2.0, 2.1, 1.0]
        parents += [None, root, root, root + 1]
    kurt = np.array(kurt) if kurtosis_falls else -np.array(kurt)
    return np.stack(vectors), kurt, parents


def test_mother_recovers_a_planted_tree():
    vectors, kurt, truth = planted_forest(kurtosis_falls=True)
    predicted = mother.recover_lineage(vectors, kurt, n_clusters=2, lam=0.3)
    assert predicted == truth
    assert mother.lineage_scores(predicted, truth) == {"accuracy": 1.0, "f1": 1.0, "edges": 6}
    # the kurtosis term sets the direction: reversed kurtosis turns the trees around
    vectors, rising, _ = planted_forest(kurtosis_falls=False)
    wrong = mother.recover_lineage(vectors, rising, n_clusters=2, lam=0.3)
    assert mother.lineage_scores(wrong, truth)["f1"] < 0.5


def test_lineage_scores_on_a_sparse_adjacency():
    truth = [None, 0, 0, 1]
    scores = mother.lineage_scores([None, 0, 1, 1], truth)  # one edge wrong of three
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(10 / 12)


@pytest.fixture(scope="module")
def micro_zoo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysis")
    tree = {**MICRO, "finetune": {**MICRO["finetune"], "epochs": 3},
            "grid": {"lr": [1e-3], "optimizer": ["adamw", "sgd"], "head": ["linear", "mlp"],
                     "head_seed": [1, 2]}}
    recipe = tmp / "micro.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    zoo_dir = tmp / "zoo"
    assert main(["run", str(recipe), "--zoo-dir", str(zoo_dir)]) == 0
    return zoo_dir


@pytest.mark.slow
def test_analyze_writes_the_report_and_its_figures(micro_zoo, capsys):
    out = micro_zoo / "report"
    assert main(["analyze", str(micro_zoo), "--out", str(out), "--window", "2"]) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert (result["backbones"], result["finetunes"]) == (2, 16)
    t2 = result["table2"]
    assert {"pretraining=mae", "pretraining=supervised", "head=linear", "head=mlp",
            "optimizer=adamw", "optimizer=sgd", "lr=0.001", "all"} == set(t2)
    assert t2["all"]["models"] == 16 and 0 <= t2["all"]["agreement"]["mean"] <= 1
    assert t2["all"]["l2_to_ancestor"]["mean"] > 0
    assert set(result["table1"]) == {"mae", "supervised", "all"}
    assert result["table1"]["supervised"]["accuracy"] is not None
    assert result["table1"]["mae"]["accuracy"] is None  # MAE has no classifier accuracy
    assert len(result["epoch_averaging"]) == 16
    assert set(result["longitudinal"]) == {"2", "3"}
    varied = {r["varied"] for r in result["soups"]}
    assert {"head_seed", "optimizer", "head"} <= varied
    assert all("skipped" in r for r in result["soups"] if r["varied"] == "head")
    assert all(0 <= r["soup_acc"] <= 1 for r in result["soups"] if "soup_acc" in r)
    assert len(result["greedy_soups"]) == 4
    assert set(result["mother"]) == {"epochs", "head_seed", "head", "optimizer"}
    for name in ("report.md", "epoch_averaging.png", "soups.png", "longitudinal.png"):
        assert (out / name).stat().st_size > 500
    assert (out / "soups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "Table 2" in report and "![soups.png](soups.png)" in report
    assert "## Every factor jointly (Table 6)" in report and len(result["table6"]) == 8
    assert "|  | Epochs | Seed | LR | Cls. Head | Optimizer |" in report  # Table 3 layout
    assert "| nodes / edges | 8 / 6 | 14 / 12 | - | 14 / 12 | 14 / 12 |" in report


@pytest.mark.slow  # the micro zoo trains 18 runs
def test_averaged_models_use_the_runners_evaluation(micro_zoo):
    """A one-epoch 'average' is the checkpoint itself: its evaluation must reproduce the
    test accuracy the runner logged for that epoch."""
    analysis = ZooAnalysis(micro_zoo, window=1)
    analysis.finetunes = analysis.finetunes[:3]
    for row in analysis.epoch_averaging():
        assert row["averaged_acc"] == pytest.approx(row["best_individual_acc"], abs=1e-9)
    model = analysis.finetunes[0]
    assert stats.agreement(analysis.predictions(model), analysis.predictions(model)) == 1.0


@pytest.mark.slow  # the micro zoo trains 18 runs
def test_eval_of_a_zoo_epoch_checkpoint_matches_its_logged_accuracy(micro_zoo, capsys):
    """mlit.eval rebuilds a zoo epoch's model from its model.pt alone and reads the data from
    the model folder's recipe.yaml: the accuracy the runner logged for that epoch, exactly."""
    from mlit.eval import main as evaluate_main
    from mlit.population import layout

    model_dir = micro_zoo / "finetuning/mae_seed0/ft_lr1e-03_sgd_mlp_seed2"
    logged = {r["epoch"]: r["test_acc"] for r in layout.read_results(model_dir)}
    for epoch in (0, 3):
        path = model_dir / f"checkpoint_{epoch:06d}" / "model.pt"
        assert evaluate_main([str(path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["top1"] == logged[epoch]


@pytest.mark.slow  # the micro zoo trains 18 runs
def test_refined_zoo_joint_breakdown_and_the_papers_lineage_protocol(micro_zoo):
    full = ZooAnalysis(micro_zoo)
    accs = sorted(m.last["test_acc"] for m in full.finetunes)
    threshold = accs[len(accs) // 2]
    kept = {m.path for m in full.finetunes if m.last["test_acc"] >= threshold}
    refined = ZooAnalysis(micro_zoo, min_acc=threshold)
    assert refined.refined == {"min_acc": threshold, "kept": len(kept), "finished": 16}
    assert {m.path for m in refined.finetunes} == kept and 0 < len(kept) < 16
    assert refined.table2()["all"]["models"] == len(kept)
    assert len(refined.backbones) == 2  # backbones are all kept
    with pytest.raises(ValueError, match="no fine-tune reaches it"):
        ZooAnalysis(micro_zoo, min_acc=1.01)
    # Table 6: every factor jointly; the two head seeds pooled per row
    rows = full.table6()
    assert [(r["pretraining"], r["optimizer"], r["head"]) for r in rows] == [
        (p, o, h) for p in ("mae", "supervised") for o in ("adamw", "sgd")
        for h in ("linear", "mlp")]
    for r in rows:
        group = [m.last["test_acc"] for m in full.finetunes
                 if (m.factors["pretraining"], m.factors["optimizer"], m.factors["head"])
                 == (r["pretraining"], r["optimizer"], r["head"])]
        assert r["models"] == 2 and (r["min"], r["max"]) == (min(group), max(group))
        assert r["accuracy"]["mean"] == pytest.approx(sum(group) / 2)
    # MoTHeR as the paper's Appendix B: every backbone the same number of descendants, a
    # factor with two values padded with epochs into two chains
    labels, _, parents, children = full.lineage_population("head_seed")
    assert children == 6 and len(labels) == 2 * (1 + 6)
    roots = [i for i, p in enumerate(parents) if p is None]
    assert len(roots) == 2
    first = labels[roots[0] + 1].split("@")[0]
    assert [labels[i].split("@")[1] for i in range(roots[0] + 1, roots[0] + 4)] == ["1", "2", "3"]
    assert parents[roots[0] + 1] == roots[0] and parents[roots[0] + 2] == roots[0] + 1
    assert parents[roots[0] + 4] == roots[0] and labels[roots[0] + 4].split("@")[0] != first
    full.mother_children = 4
    assert full.lineage_population("head_seed")[3] == 4
    assert [labels.split("@")[1] for labels in full.lineage_population("epochs")[0][1:4]] == [
        "1", "2", "3"]

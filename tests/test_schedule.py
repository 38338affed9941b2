"""The end-of-epoch schedule (mlit/training/schedule.py), without training: when a stage
evaluates, measures k-NN, checkpoints and may stop."""

import pytest

from mlit.recipe.schema import Stage
from mlit.training.schedule import due


def stage(**settings) -> Stage:
    return Stage(**{"epochs": 10, "batch_size": 8, "base_lr": 1e-3, **settings})


def epochs_where(flag: str, s: Stage, last_epoch: int | None = None, knn: bool = False):
    last = last_epoch or s.epochs
    return [e for e in range(1, last + 1) if getattr(due(s, e, last, knn), flag)]


def test_evaluation_every_n_epochs_and_at_the_last():
    assert epochs_where("evaluate", stage(eval_every=4)) == [4, 8, 10]
    assert epochs_where("evaluate", stage()) == list(range(1, 11))


def test_knn_only_with_a_monitor_on_its_own_interval():
    s = stage(knn_every=3, eval_every=5)
    assert epochs_where("knn", s, knn=True) == [3, 6, 9, 10]
    assert epochs_where("knn", s, knn=False) == []
    assert epochs_where("knn", stage(), knn=True) == []  # knn_every 0: no monitor to run


@pytest.mark.parametrize("last_epoch, expected", [
    (10, [3, 6, 9, 10]),  # the whole stage: every 3 and the last
    (4, [3, 4]),  # train.stop_after_epochs: also where this invocation stops
])
def test_checkpoints_every_n_the_last_and_where_an_invocation_stops(last_epoch, expected):
    assert epochs_where("checkpoint", stage(checkpoint_every=3), last_epoch) == expected


def test_epoch_checkpoints_and_the_last_epoch():
    assert epochs_where("epoch_checkpoint", stage(epoch_checkpoints=True)) == list(range(1, 11))
    assert epochs_where("epoch_checkpoint", stage()) == []
    assert epochs_where("done", stage()) == [10]
    assert epochs_where("done", stage(), last_epoch=4) == []  # stops early: not done

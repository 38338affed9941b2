"""What is due at the end of an epoch: a pure function of the stage's settings and the
epoch, so that the schedule is tested without training (tests/test_schedule.py) and the
runner's loop (StageRun.run) reads as the list of what it does."""

from __future__ import annotations

from dataclasses import dataclass

from mlit.recipe.schema import Stage


@dataclass(frozen=True)
class Due:
    evaluate: bool  # the test split: every eval_every epochs and at the last
    knn: bool  # the k-NN monitor (a pre-training stage with knn_every): the same rule
    checkpoint: bool  # checkpoint.pt: every checkpoint_every epochs, the last, and where
    # this invocation stops (train.stop_after_epochs)
    epoch_checkpoint: bool  # epoch_<n>.pt beside it (stage.epoch_checkpoints)
    done: bool  # the stage's last epoch: nothing is left to stop in


def due(stage: Stage, epoch: int, last_epoch: int, knn: bool = False) -> Due:
    """What to do after `epoch` (1-based, just trained) of a stage this invocation runs up to
    `last_epoch`; knn: the stage has a k-NN monitor."""
    done = epoch == stage.epochs
    return Due(
        evaluate=done or epoch % stage.eval_every == 0,
        knn=knn and stage.knn_every > 0 and (done or epoch % stage.knn_every == 0),
        checkpoint=done or epoch % stage.checkpoint_every == 0 or epoch == last_epoch,
        epoch_checkpoint=stage.epoch_checkpoints,
        done=done)

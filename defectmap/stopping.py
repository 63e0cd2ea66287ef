"""How long a run trains: `train.epochs`, raised to take `train.min_steps` optimizer steps; how often it validates
(`train.validate_every`); early stopping after `train.patience` epochs and `train.patience_steps` steps without
improvement, never before `train.min_steps`; and a warning for runs far shorter than their method's recipe.

Patience and the schedule count epochs, as users expect; on a few dozen images an epoch is a few optimizer steps, so
the default epochs can be a few dozen steps and a patience of epochs can end a run that is still learning.
`train.min_steps` (each method's default: the steps its results were measured with) trains such a run as long as its
recipe, `train.patience_steps` makes early stopping wait a number of steps as well, the run says how many epochs and
steps it waited when early stopping ends it, and a run planned for under half its method's recipe steps, with no
`train.min_steps` of its own, is warned about.
"""

from __future__ import annotations

import math

from defectmap.config import TrainConfig
from defectmap.resume import TrainState
from defectmap.text import plural


def steps_per_epoch(items: int, batch_size: int) -> int:
    """Optimizer steps an epoch over `items` takes: batches of at most `items`, an incomplete last batch dropped."""
    return items // min(batch_size, items)


def planned_epochs(train: TrainConfig, per_epoch: int) -> int:
    """The epochs a run trains at most: `train.epochs`, or more where that takes fewer than `train.min_steps` steps."""
    return max(train.epochs, math.ceil(train.min_steps / per_epoch))


def validation_interval(train: TrainConfig, epochs: int) -> int:
    """Epochs between validations: `train.validate_every` where set; otherwise 1, or, where `train.min_steps` raised
    the run to `epochs`, as many validations as `train.epochs` (a 25-image PRN run of 340 epochs validates every 29
    epochs, 12 times, as its recipe of 12 epochs does; validating every epoch made it take 2.7 times as long)."""
    if train.validate_every:
        return train.validate_every
    return math.ceil(epochs / train.epochs) if epochs > train.epochs else 1


def validates(done: int, interval: int, epochs: int) -> bool:
    """Whether the run validates after `done` of its `epochs` epochs: every `interval` epochs, and after the last."""
    return done % interval == 0 or done == epochs


def schedule_line(trained: str, validated: str, per_epoch: int, epochs: int, interval: int, train: TrainConfig) -> str:
    """What `train` says when it starts: the images, the optimizer steps of an epoch and of the whole run of
    `epochs` (`planned_epochs`), and why where they are more than `train.epochs`; the epochs between validations
    (`validation_interval`) where that is not every epoch."""
    raised = f" (train.epochs={train.epochs}, raised to take train.min_steps={train.min_steps})"
    raised = raised if epochs > train.epochs else ""
    every = f", validating every {interval} epochs" if interval > 1 else ""
    return (
        f"training on {trained}, validating on {validated}: {plural(per_epoch, 'optimizer step')} an epoch, at "
        f"most {per_epoch * epochs} in {plural(epochs, 'epoch')}{raised}{every}"
    )


def patience_ran_out(train: TrainConfig, state: TrainState) -> bool:
    """Both `train.patience` epochs and `train.patience_steps` steps since the kept epoch, and `train.min_steps` steps
    in all (patience 0: never). Asked after validated epochs only."""
    waited = state.global_step - state.best_step >= train.patience_steps and state.global_step >= train.min_steps
    return bool(train.patience) and state.stale >= train.patience and waited


def stop_message(state: TrainState, epochs: int) -> str:
    """What early stopping says when it ends a run: the epochs and the optimizer steps it waited. A run on a few
    images that stops at 11 of 329 epochs after 30 steps shows that patience ended it while the schedule had hardly
    begun (README, "How many good images does a line need?")."""
    waited = f"{plural(state.stale, 'epoch')}, {plural(state.global_step - state.best_step, 'optimizer step')}"
    return (
        f"early stopping after epoch {state.epoch} of {epochs}: {waited}, without improvement "
        "(train.patience, train.patience_steps, train.min_steps)"
    )


def short_run_warning(method: str, recipe_steps: int, per_epoch: int, epochs: int, min_steps: int) -> str | None:
    """The warning for a run that can take under half the optimizer steps `method`'s results were measured with,
    where no step count was set: a `train.epochs` given without `train.min_steps` turned the method's default off. A
    run given its own `min_steps` (as the demo preset does: 30 steps do on its fabric) chose its steps."""
    if min_steps or per_epoch * epochs >= recipe_steps / 2:
        return None
    return (
        f"this run takes at most {plural(per_epoch * epochs, 'optimizer step')} ({plural(epochs, 'epoch')} of "
        f"{per_epoch}), and {method}'s results were measured with {recipe_steps} steps: on few images add "
        f"train.min_steps={recipe_steps} (the run then trains at least that many) or set train.epochs="
        f"{math.ceil(recipe_steps / per_epoch)}"
    )

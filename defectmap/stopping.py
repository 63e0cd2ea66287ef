"""Early stopping: `train.patience` epochs and `train.patience_steps` optimizer steps without improvement.

Patience counts epochs, as users expect; on a few dozen images an epoch is a few optimizer steps, so a patience of
epochs can end a run that is still learning. `train.patience_steps` makes it wait a number of steps as well, and the
run says how many epochs and steps it waited when early stopping ends it.
"""

from __future__ import annotations

from defectmap.config import TrainConfig
from defectmap.resume import TrainState


def patience_ran_out(train: TrainConfig, state: TrainState) -> bool:
    """Both `train.patience` epochs and `train.patience_steps` steps since the kept epoch (patience 0: never)."""
    waited = state.global_step - state.best_step >= train.patience_steps
    return bool(train.patience) and state.stale >= train.patience and waited


def stop_message(train: TrainConfig, state: TrainState) -> str:
    """What early stopping says when it ends a run: the epochs and the optimizer steps it waited. A run on a few
    images that stops at 11 of 329 epochs after 30 steps shows that patience ended it while the schedule had hardly
    begun (README, "How many good images does a line need?")."""
    steps = state.global_step - state.best_step
    epochs = f"{state.stale} epoch{'s' * (state.stale != 1)}"
    return (
        f"early stopping after epoch {state.epoch} of {train.epochs}: {epochs}, {steps} optimizer "
        f"step{'s' * (steps != 1)}, without improvement (train.patience, train.patience_steps)"
    )

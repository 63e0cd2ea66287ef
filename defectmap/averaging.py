"""`train.ema_decay`: an exponential moving average of the weights, validated, kept and saved instead of the
weights of the last optimizer step (as in Polyak averaging; the warm-up of the decay follows TensorFlow's
ExponentialMovingAverage with `num_updates`, so the first steps do not drag the random initialisation along)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    """Averages every floating-point tensor of a model's state dict (weights and BatchNorm statistics) after each
    optimizer step; integer buffers (step counters) are copied. `state` is what `last.ckpt` stores."""

    def __init__(self, model: torch.nn.Module, decay: float, state: dict | None = None) -> None:
        live = model.state_dict()
        self.decay = decay
        if state is None:
            self.state = {k: v.detach().clone() for k, v in live.items()}
        else:  # from last.ckpt, which loads on the CPU
            self.state = {k: state[k].to(v.device) for k, v in live.items()}
        self._floats = [k for k, v in live.items() if v.is_floating_point()]
        self._others = [k for k, v in live.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """After optimizer step `step` (1, 2, ...: the run's global step, so a resumed run goes on alike)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        live = model.state_dict()
        # lerp(a, b, w) = a + w (b - a): frozen tensors (a == b) stay bit-identical
        for key in self._floats:
            self.state[key].lerp_(live[key], 1.0 - decay)
        for key in self._others:
            self.state[key].copy_(live[key])

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The averaged weights in `model` for the block (validation, keeping the best), the live ones after."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(live)

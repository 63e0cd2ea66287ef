"""Interrupted training: the training state in `last.ckpt`, epoch orders that can be replayed, stop signals.

A resumed run replays the same per-epoch image order from the same position with the same RNG, so it
ends with the weights an uninterrupted run reaches (bit-identical in `train.deterministic` mode).
"""

from __future__ import annotations

import math
import random
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from defectmap.checkpoint import STATE_FORMAT, atomic_write, load_checkpoint
from defectmap.config import Config, config_to_dict


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches done in the current epoch
    global_step: int = 0
    best_loss: float = math.inf  # of the selection measure, lower is better (train.select=probe: -quality)
    stale: int = 0  # epochs since the selection measure (train.select) last improved
    best_step: int = 0  # global_step at the end of the epoch kept so far (train.patience_steps)
    running: float = 0.0  # smoothed training loss shown in the progress bar
    seconds: float = 0.0  # training time so far, across resumptions
    history: list[dict] = field(default_factory=list)
    loss_sums: dict[str, float] = field(default_factory=dict)  # each loss term summed over the epoch's steps so far
    best_state: dict[str, torch.Tensor] | None = None
    average: dict[str, torch.Tensor] | None = None  # train.ema_decay: the averaged weights


def epoch_order(
    n: int, seed: int, epoch: int, images: list[int] | None = None, pool: int = 1, batch_size: int = 1,
    workers: int = 0,
) -> list[int]:  # fmt: skip
    """The shuffled item order of one epoch, a pure function of its arguments.

    With `images` (each item's image: tiles decoded from their files), the images are shuffled and then the items
    of every `pool` consecutive images among themselves, so that a dataset keeping its last `pool` decoded images
    decodes each image once an epoch while a batch still mixes tiles of several images. With `workers` (DataLoader
    processes, each keeping its own pool) the pools are dealt out among them (`_by_worker`).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if images is None:
        return torch.randperm(n, generator=generator).tolist()
    items: dict[int, list[int]] = {}
    for item, image in enumerate(images):
        items.setdefault(image, []).append(item)
    keys = list(items)
    shuffled = [keys[i] for i in torch.randperm(len(keys), generator=generator).tolist()]
    pools = []
    for start in range(0, len(shuffled), pool):
        pooled = [item for image in shuffled[start : start + pool] for item in items[image]]
        pools.append([pooled[i] for i in torch.randperm(len(pooled), generator=generator).tolist()])
    if workers < 2:
        return [item for pooled in pools for item in pooled]
    return _by_worker(pools, batch_size, workers)


def _by_worker(pools: list[list[int]], batch_size: int, workers: int) -> list[int]:
    """A DataLoader hands batch i to worker i % workers: deal whole pools out (each to the worker with the fewest
    items so far), then interleave the workers' batches, so that every worker decodes only its own images. What is
    left once one worker has no full batch more goes last, in any worker's hands (about a pool per worker at most)."""
    streams: list[list[int]] = [[] for _ in range(workers)]
    for pooled in pools:
        min(streams, key=len).extend(pooled)
    full = min(len(stream) for stream in streams) // batch_size
    order = [item for b in range(full) for stream in streams for item in stream[b * batch_size : (b + 1) * batch_size]]
    return order + [item for stream in streams for item in stream[full * batch_size :]]


def save_training_state(path: Path, cfg: Config, model: torch.nn.Module, optimizers: dict, state: TrainState) -> None:
    scalars = {k: v for k, v in asdict(state).items() if k not in ("best_state", "average")}
    payload = {
        "format": STATE_FORMAT,
        "format_version": 1,
        "config": config_to_dict(cfg),
        "model": model.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "state": scalars,
        "best_state": state.best_state,
        "average": state.average,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        },
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_training_state(path: Path) -> dict[str, Any]:
    from defectmap.errors import CheckpointError

    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist (train without --resume first)")
    return load_checkpoint(path, expected_format=STATE_FORMAT)


def restore_training_state(saved: dict, model: torch.nn.Module, optimizers: dict) -> TrainState:
    model.load_state_dict(saved["model"])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(saved["optimizers"][name])
    torch.set_rng_state(saved["rng"]["torch"])
    if saved["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    random.setstate(saved["rng"]["python"])
    return TrainState(**saved["state"], best_state=saved["best_state"], average=saved.get("average"))


class StopSignals:
    """While active, SIGINT and SIGTERM set `received` so the loop can save and stop at a step boundary."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received:  # a second signal: stop now
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

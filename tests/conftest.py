"""Shared fixtures: a tiny MVTec-layout dataset in tmp_path and small model configs for every method."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectmap.config import apply_overrides, resolve_config
from defectmap.data.demo import add_defect, fabric

# Per-method overrides that keep tests fast on 2 CPU cores; every MODELS entry needs one.
TINY_MODEL = {
    "ae": {"channels": [8, 16], "latent_channels": 4, "smoothing_sigma": 1.0},
    "daad": {
        "channels": [8, 16, 32],
        "latent_channels": 4,
        "memory_levels": [0, 1],
        "block_sizes": [4, 2],
        "memory_items": [8, 8],
        "discriminator_channels": [8, 16],
        "smoothing_sigma": 1.0,
    },
    "pmb": {
        "channels": [8, 16, 32],
        "latent_channels": 4,
        "skips": ["pmb", "plain"],
        "grid": 2,
        "memory_items": 8,
        "smoothing_sigma": 1.0,
    },
    "prn": {
        "backbone": "resnet18",
        "pretrained": False,
        "width": 8,
        "attention_layers": 1,
        "decoder_channels": [8, 8, 8, 8],
        "max_prototypes": 3,
        "smoothing_sigma": 1.0,
        "top_k": 10,
    },
}


def tiny_config(method: str, root: Path | str = "", category: str = "tiny", **train):
    values = {
        "data": {"root": str(root), "category": category, "image_size": 32, "val_fraction": 0.25},
        "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 4, "device": "cpu", **train},
        "model": TINY_MODEL[method],
    }
    return resolve_config(values, method)


def tiled_config(method: str, root: Path | str, **data):
    """tiny_config scored on 24-pixel tiles, 8 pixels overlapping."""
    cfg = tiny_config(method, root)
    apply_overrides(cfg, {"data": {"tile": 24, "tile_overlap": 8, **data}})
    return cfg


def assert_trained_alike(a: dict, b: dict, close: float, far: float) -> None:
    """State dicts of one training run computed with float sums in another order (other processes, fused kernels).

    Every floating tensor lies within `far`, and under 1% of its values more than `close` apart. Adam moves a weight
    by up to its learning rate each step whatever the gradient's size, so float noise in a near-zero gradient can
    land a rare weight a step away; a different computation moves many weights.
    """
    for key, value in a.items():
        if value.is_floating_point():
            gap = (b[key].float() - value.float()).abs()
            assert gap.max() <= far and (gap > close).float().mean() < 0.01, (key, gap.max().item())


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """`tmp_path/data/tiny`: 8 good training images, 3 good and 4 defective test images of mixed sizes."""
    rng = np.random.default_rng(0)
    base = tmp_path / "data" / "tiny"
    for i in range(8):
        write_image(base / "train" / "good" / f"{i:02d}.png", fabric(rng, 40))
    for i in range(3):
        write_image(base / "test" / "good" / f"{i:02d}.jpg", fabric(rng, 40)[:, :36])
    for i, kind in enumerate(["hole", "stain", "thread", "hole"]):
        image, mask = add_defect(fabric(rng, 48), kind, rng)
        write_image(base / "test" / kind / f"{i:02d}.png", image)
        write_image(base / "ground_truth" / kind / f"{i:02d}_mask.png", mask.astype(np.float32))
    return tmp_path / "data"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_stderr(monkeypatch):
    """Call it to make sys.stderr a terminal, so progress bars are drawn (they are off on captured or redirected
    output); it returns the stream. Called inside the test, since pytest re-installs its capture after setup."""

    def install() -> io.StringIO:
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        return terminal

    return install

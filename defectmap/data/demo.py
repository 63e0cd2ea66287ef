"""A procedurally generated woven-fabric category with holes, stains and pulled threads, in MVTec layout.

Deterministic by seed and written in a few seconds; `defectmap demo` trains and evaluates on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DEFECTS = ("hole", "stain", "thread")


def fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    """A plain weave: alternating over/under warp and weft threads with jitter, tint and fibre noise."""
    period = rng.uniform(7.0, 8.0)
    angle = rng.uniform(-0.05, 0.05)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    u = (xx * np.cos(angle) - yy * np.sin(angle)) / period + rng.uniform(0, 1)
    v = (xx * np.sin(angle) + yy * np.cos(angle)) / period + rng.uniform(0, 1)
    over = (np.floor(u) + np.floor(v)) % 2 == 0
    warp = np.sin(np.pi * (u % 1.0)) ** 0.7
    weft = np.sin(np.pi * (v % 1.0)) ** 0.7
    shade = 0.35 + 0.45 * np.where(over, warp, weft)
    shade += rng.normal(0, 0.03, (size, size)).astype(np.float32)
    tint = np.array([0.92, 0.85, 0.70], dtype=np.float32) * rng.uniform(0.95, 1.05)
    return np.clip(shade[:, :, None] * tint, 0, 1)


def _disk(size: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of `kind` and return (image, mask)."""
    size = image.shape[0]
    margin = size // 6
    cy, cx = rng.uniform(margin, size - margin, 2)
    out = image.copy()
    if kind == "hole":
        radius = rng.uniform(size / 40, size / 16)
        mask = _disk(size, cy, cx, radius, radius * rng.uniform(0.7, 1.3))
        out[mask] = rng.uniform(0.02, 0.08)
    elif kind == "stain":
        ry, rx = rng.uniform(size / 25, size / 10, 2)
        mask = _disk(size, cy, cx, ry, rx)
        color = np.array([0.45, 0.25, 0.12], dtype=np.float32) * rng.uniform(0.8, 1.2)
        out[mask] = 0.35 * out[mask] + 0.65 * color
    elif kind == "thread":
        length, angle = rng.uniform(size / 6, size / 3), rng.uniform(0, np.pi)
        steps = np.linspace(-0.5, 0.5, int(length * 2))
        ys = np.clip(np.round(cy + steps * length * np.sin(angle)).astype(int), 0, size - 1)
        xs = np.clip(np.round(cx + steps * length * np.cos(angle)).astype(int), 0, size - 1)
        mask = np.zeros((size, size), dtype=bool)
        for dy in (0, 1):
            for dx in (0, 1):
                mask[np.clip(ys + dy, 0, size - 1), np.clip(xs + dx, 0, size - 1)] = True
        out[mask] = rng.uniform(0.95, 1.0)
    else:
        raise ValueError(f"unknown demo defect '{kind}'; choose from {DEFECTS}")
    return out, mask


def _defective(image: np.ndarray, kind: str, rng: np.random.Generator, window: int) -> tuple[np.ndarray, np.ndarray]:
    """`add_defect` on the whole image, or on a random window x window part of it."""
    if not window:
        return add_defect(image, kind, rng)
    y, x = rng.integers(0, image.shape[0] - window, 2)
    part, small = add_defect(image[y : y + window, x : x + window], kind, rng)
    image[y : y + window, x : x + window] = part
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[y : y + window, x : x + window] = small
    return image, mask


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)


def write_demo_dataset(
    root: str | Path,
    *,
    category: str = "fabric",
    size: int = 160,
    n_train: int = 120,
    n_test_good: int = 30,
    n_per_defect: int = 15,
    seed: int = 0,
    defect_window: int = 0,
) -> Path:
    """Write `<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>}` and return the category path.

    `defect_window` > 0 paints each defect as it would be in an image of that size, inside a random window of it:
    small defects in large images (bench/tiles.py)."""
    rng = np.random.default_rng(seed)
    base = Path(root) / category
    for i in range(n_train):
        _save(fabric(rng, size), base / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        _save(fabric(rng, size), base / "test" / "good" / f"{i:03d}.png")
    for kind in DEFECTS:
        for i in range(n_per_defect):
            image, mask = _defective(fabric(rng, size), kind, rng, defect_window)
            _save(image, base / "test" / kind / f"{i:03d}.png")
            _save(mask.astype(np.float32), base / "ground_truth" / kind / f"{i:03d}_mask.png")
    return base

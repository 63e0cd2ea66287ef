"""Near-copies: other shots of one physical part (another lighting, a slightly different crop) among image files.

Datasets such as Magnetic Tile photograph each part several times and file every shot separately, so a part drawn
for few-shot training can still be in the test set under another file name. Two images are compared by their fine
texture: grey, scaled by one factor for the whole set (so shots from one camera keep one physical scale; the median
shorter side becomes `SHORT_SIDE` pixels), high-passed (minus a Gaussian blur of sigma 2, so the lighting's shading
drops out), standardised; their top-left `SIDE` x `SIDE` pixels are cross-correlated over shifts of up to `SHIFT`
pixels, and the peak normalised correlation is their similarity (1 for a copy; a median of 0.11 over random pairs
of Magnetic Tile images, and 0.7 or more for every pair we looked at that showed one tile).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from defectmap.data.images import load_image
from defectmap.data.mvtec import Sample

SHORT_SIDE, SIDE, SHIFT = 96, 128, 12


def _shorter_side(path: Path, max_pixels: int) -> int:
    try:
        with Image.open(path) as image:  # the header alone; a quarter turn (EXIF) keeps the shorter side
            return min(image.size)
    except Exception:  # let the image reader name what is wrong with the file
        return min(load_image(path, max_pixels).shape[:2])


def signatures(paths: list[Path], max_pixels: int) -> list[tuple[np.ndarray, int]]:
    """Each image's texture signature (its padded FFT and pixel count), all at one scale; one image in memory at a
    time."""
    sides = [_shorter_side(path, max_pixels) for path in paths]
    scale = min(1.0, SHORT_SIDE / float(np.median(sides))) if paths else 1.0
    found = []
    for path in paths:
        grey = Image.fromarray(np.round(load_image(path, max_pixels).mean(axis=2) * 255).astype(np.uint8))
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        pixels = np.asarray(grey.resize(size, Image.BILINEAR), dtype=np.float32)
        pixels = (pixels - ndimage.gaussian_filter(pixels, 2))[:SIDE, :SIDE]
        pixels = (pixels - pixels.mean()) / (pixels.std() + 1e-6)
        padded = np.zeros((2 * SIDE, 2 * SIDE), np.float32)
        padded[: pixels.shape[0], : pixels.shape[1]] = pixels
        found.append((np.fft.rfft2(padded), pixels.size))
    return found


def similarity(a: tuple[np.ndarray, int], b: tuple[np.ndarray, int]) -> float:
    """Peak normalised cross-correlation of two signatures over shifts of up to SHIFT pixels each way."""
    corr = np.fft.irfft2(a[0] * np.conj(b[0]), s=(2 * SIDE, 2 * SIDE))
    rows = np.concatenate([corr[: SHIFT + 1], corr[-SHIFT:]])
    return float(np.concatenate([rows[:, : SHIFT + 1], rows[:, -SHIFT:]], axis=1).max() / min(a[1], b[1]))


def near_copies(of: list[Sample], among: list[Sample], threshold: float, max_pixels: int) -> list[Sample]:
    """The samples of `among` whose similarity to any sample of `of` is `threshold` or more."""
    if not of or not among:
        return []
    found = signatures([s.path for s in of + among], max_pixels)
    references, candidates = found[: len(of)], found[len(of) :]
    return [s for s, c in zip(among, candidates, strict=True) if max(similarity(r, c) for r in references) >= threshold]

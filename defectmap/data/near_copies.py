"""Near-copies: other shots of one physical part (another lighting, a slightly different crop) among image files.

Datasets such as Magnetic Tile photograph each part several times and file every shot separately, so a part drawn
for few-shot training can still be in the test set under another file name (`data.near_copy_similarity` leaves those
out), and a tested part can be among the training images (`data.unseen_parts` leaves those out). Two images are
compared by their fine texture: grey, scaled by one factor for the whole set (so shots from one camera keep one
physical scale; the median shorter side becomes `SHORT_SIDE` pixels), high-passed (minus a Gaussian blur of sigma 2,
so the lighting's shading drops out), standardised; their top-left `SIDE` x `SIDE` pixels are cross-correlated over
shifts of up to `SHIFT` pixels, and the peak normalised correlation is their similarity (1 for a copy; a median of
0.11 over random pairs of Magnetic Tile images, and 0.7 or more for every pair we looked at that showed one tile).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from defectmap.data.images import load_image
from defectmap.data.mvtec import Sample
from defectmap.progress import bars_off

SHORT_SIDE, SIDE, SHIFT = 96, 128, 12
PAD = 144  # the FFT size: at least SIDE + SHIFT, so the shifts looked at wrap round onto nothing


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
        padded = np.zeros((PAD, PAD), np.float32)
        padded[: pixels.shape[0], : pixels.shape[1]] = pixels
        found.append((np.fft.rfft2(padded).astype(np.complex64), pixels.size))
    return found


def similarity(a: tuple[np.ndarray, int], b: tuple[np.ndarray, int]) -> float:
    """Peak normalised cross-correlation of two signatures over shifts of up to SHIFT pixels each way."""
    return float(similarities([a], [b])[0, 0])


def similarities(
    of: list[tuple[np.ndarray, int]], among: list[tuple[np.ndarray, int]], chunk: int = 256, progress: bool = False
) -> np.ndarray:
    """similarity() of every signature of `of` (rows) to every one of `among` (columns), `chunk` pairs of FFTs at a
    time (about 0.08 ms a pair on two CPU cores); `progress` draws a bar on a terminal."""
    found = np.zeros((len(of), len(among)), np.float32)
    if not of or not among:
        return found
    spectra = torch.from_numpy(np.stack([s[0] for s in among]))
    sizes = torch.tensor([s[1] for s in among], dtype=torch.float32)
    near = torch.cat([torch.arange(SHIFT + 1), torch.arange(PAD - SHIFT, PAD)])  # the shifts looked at, each way
    bar = tqdm(of, desc="comparing images", unit="image", disable=bars_off(progress))
    for row, (spectrum, size) in enumerate(bar):
        reference = torch.from_numpy(spectrum).conj()
        for start in range(0, len(among), chunk):
            corr = torch.fft.irfft2(spectra[start : start + chunk] * reference, s=(PAD, PAD))
            peak = corr[:, near][:, :, near].amax(dim=(1, 2))
            found[row, start : start + chunk] = (peak / sizes[start : start + chunk].clamp(max=size)).numpy()
    return found


def near_copies(
    of: list[Sample], among: list[Sample], threshold: float, max_pixels: int, progress: bool = False
) -> list[Sample]:
    """The samples of `among` whose similarity to any sample of `of` is `threshold` or more."""
    if not of or not among:
        return []
    found = signatures([s.path for s in of + among], max_pixels)
    references, candidates = found[: len(of)], found[len(of) :]
    best = similarities(references, candidates, progress=progress).max(axis=0)
    return [s for s, value in zip(among, best, strict=True) if value >= threshold]

"""Anomaly synthesis: pure functions `(image, generator, ...) -> (image, mask)` on (3, H, W) floats in [0, 1].

Perlin-noise masks filled with a texture and beta-blended (DRAEM, Zavrtanik et al. ICCV 2021), CutPaste
and scar (Li et al. CVPR 2021), and "extended" anomalies that move a real defect onto the foreground of a
normal image (PRN, Zhang et al. CVPR 2023). Every random choice draws from the given `torch.Generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from defectmap.data.images import IMAGE_SUFFIXES, load_image
from defectmap.data.transforms import preprocess
from defectmap.errors import DataError

SYNTHETIC_KINDS = ("perlin", "cutpaste", "scar")
COPY_TRANSFORMS = ("flip", "dihedral")  # how a real anomaly shown as itself is varied


@dataclass
class AnomalyMix:
    """What a model that learns from anomalies trains on: shares of normal, real and synthetic images."""

    normal_share: float = 0.5
    real_share: float = 0.25  # real anomalies and "extended" copies of them; synthetic when there are none
    synthetic_kinds: tuple[str, ...] = SYNTHETIC_KINDS
    beta_max: float = 0.8
    copy_share: float = 0.5  # of the real-anomaly draws: the real image itself (maybe mirrored); rest extended
    copy_transform: str = "flip"  # one of COPY_TRANSFORMS (see real_copy)
    # False: a real image shown as itself trains only its marked pixels (its mask may miss other defect-like marks)
    real_negatives: bool = True
    clean_target: bool = False  # every item also carries "clean", the image before any anomaly (a rebuild target)


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high)."""
    return int(torch.randint(low, max(high, low + 1), (), generator=generator))


def perlin_noise(height: int, width: int, cells: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(H, W) gradient noise in about [-0.7, 0.7] on a `cells` (rows, cols) lattice of random unit gradients."""
    rows, cols = cells
    angles = 2 * math.pi * torch.rand(rows + 1, cols + 1, generator=generator)
    gradients = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)  # (rows+1, cols+1, 2) as (gy, gx)
    y = torch.arange(height, dtype=torch.float32) * rows / height
    x = torch.arange(width, dtype=torch.float32) * cols / width
    y0, x0 = y.floor().long(), x.floor().long()
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = gradients[(y0 + dy)[:, None], (x0 + dx)[None, :]]  # (H, W, 2)
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: torch.Tensor) -> torch.Tensor:
        return t * t * t * (t * (t * 6 - 15) + 10)  # Perlin's quintic: zero first and second derivatives at 0, 1

    top = torch.lerp(corner(0, 0), corner(0, 1), fade(fx))
    bottom = torch.lerp(corner(1, 0), corner(1, 1), fade(fx))
    return torch.lerp(top, bottom, fade(fy))


def perlin_mask(
    height: int, width: int, generator: torch.Generator, threshold: float = 0.5, min_fraction: float = 0.002
) -> torch.Tensor:
    """(H, W) 0/1 mask of the noise above `threshold`, at a random lattice scale 2^[0, 6) per axis.

    Redrawn (up to 20 times) until it covers `min_fraction` of the image, so a synthetic anomaly is never empty.
    """
    mask = torch.zeros(height, width)
    for _ in range(20):
        cells = (2 ** _randint(generator, 0, 6), 2 ** _randint(generator, 0, 6))
        noise = perlin_noise(height, width, cells, generator)
        if _uniform(generator) < 0.5:  # DRAEM rotates the noise; a transpose-free flip keeps shapes unbiased
            noise = noise.flip(1)
        mask = (noise > threshold).float()
        if mask.mean() >= min_fraction:
            return mask
    # Fallback: an ellipse at a random place (only after 20 nearly empty draws).
    cy, cx = _uniform(generator, 0.2, 0.8) * height, _uniform(generator, 0.2, 0.8) * width
    ry, rx = _uniform(generator, 0.05, 0.15) * height, _uniform(generator, 0.05, 0.15) * width
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).float()


def procedural_texture(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(3, H, W) texture in [0, 1] when no texture folder is given: coloured fractal noise, stripes or checks."""
    kind = _randint(generator, 0, 3)
    colours = torch.rand(2, 3, 1, 1, generator=generator)
    if kind == 0:  # three octaves of Perlin noise
        noise = sum(perlin_noise(height, width, (2**o, 2**o), generator) / 2 ** (o - 2) for o in range(2, 5))
        t = (noise - noise.min()) / (noise.max() - noise.min() + 1e-8)
    else:
        angle = _uniform(generator, 0, math.pi)
        period = _uniform(generator, 4, 24)
        yy, xx = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
        u = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        if kind == 1:  # stripes
            t = 0.5 + 0.5 * torch.sin(2 * math.pi * u)
        else:  # checks
            v = (-xx * math.sin(angle) + yy * math.cos(angle)) / period
            t = ((u.floor() + v.floor()) % 2).float()
    return (colours[0] * (1 - t) + colours[1] * t).clamp(0, 1)


def load_textures(folder: str | Path, size: int, limit: int = 0) -> list[torch.Tensor]:
    """Texture images from `folder` (searched recursively), as (3, size, size) uint8 tensors to save memory."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"texture folder {root} does not exist: set data.texture_dir to a folder of images (e.g. DTD)")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if limit:
        paths = paths[:: max(1, len(paths) // limit)][:limit]  # spread over every class folder
    if not paths:
        raise DataError(f"no images in texture folder {root}: expected image files such as DTD's")
    return [(preprocess(load_image(p), size) * 255).round().to(torch.uint8) for p in paths]


def _texture(textures: list[torch.Tensor], height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    if not textures:
        return procedural_texture(height, width, generator)
    texture = textures[_randint(generator, 0, len(textures))].float() / 255
    if _uniform(generator) < 0.5:
        texture = texture.flip(2)
    texture = texture.rot90(_randint(generator, 0, 4), dims=(1, 2))
    if texture.shape[1:] != (height, width):
        texture = F.interpolate(texture[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    # Brightness and contrast jitter, as DRAEM's texture augmentation.
    mean = texture.mean()
    texture = (texture - mean) * _uniform(generator, 0.6, 1.4) + mean * _uniform(generator, 0.6, 1.4)
    return texture.clamp(0, 1)


def _match_colour(image: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """A grayscale image gets a grayscale patch: colour alone must never give a synthetic anomaly away."""
    if torch.allclose(image[0], image[1]) and torch.allclose(image[1], image[2]):
        return patch.mean(0, keepdim=True).expand_as(patch)
    return patch


def perlin_anomaly(
    image: torch.Tensor, generator: torch.Generator, textures: list[torch.Tensor] | None = None, beta_max: float = 0.8
) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAEM-style anomaly: a Perlin mask filled with a texture, blended as (1 - beta) texture + beta image.

    beta ~ U[0, beta_max). Both images are floats in [0, 1] (the public PRN code blends 0-255 with 0-1).
    """
    _, height, width = image.shape
    mask = perlin_mask(height, width, generator)
    texture = _match_colour(image, _texture(textures or [], height, width, generator))
    beta = _uniform(generator, 0, beta_max)
    blended = (1 - beta) * texture + beta * image
    return (image * (1 - mask) + blended * mask).clamp(0, 1), mask


def _jitter(patch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness and contrast change of a pasted patch (CutPaste's colour jitter, without hue)."""
    mean = patch.mean()
    return ((patch - mean) * _uniform(generator, 0.7, 1.3) + mean * _uniform(generator, 0.8, 1.2)).clamp(0, 1)


def _shifted(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The image moved by a random offset of at least a quarter of its size (wrapping): the pasted content."""
    _, height, width = image.shape
    dy = _randint(generator, height // 4, 3 * height // 4 + 1)
    dx = _randint(generator, width // 4, 3 * width // 4 + 1)
    return _jitter(torch.roll(image, shifts=(dy, dx), dims=(1, 2)), generator)


def _rotated_box(height: int, width: int, box_h: float, box_w: float, generator: torch.Generator) -> torch.Tensor:
    """(H, W) 0/1 mask of a box of size (box_h, box_w) at a random centre and angle."""
    cy, cx = _uniform(generator, 0.1, 0.9) * height, _uniform(generator, 0.1, 0.9) * width
    angle = _uniform(generator, 0, math.pi)
    yy, xx = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    along = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    across = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    return ((along.abs() <= box_w / 2) & (across.abs() <= box_h / 2)).float()


def cutpaste(image: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste: a rectangle (2-15% of the area, aspect 0.3-3.3) of the image, jittered, pasted elsewhere."""
    _, height, width = image.shape
    area = _uniform(generator, 0.02, 0.15) * height * width
    aspect = math.exp(_uniform(generator, math.log(0.3), math.log(1 / 0.3)))
    box_h, box_w = math.sqrt(area * aspect), math.sqrt(area / aspect)
    mask = _rotated_box(height, width, min(box_h, height), min(box_w, width), generator)
    source = _shifted(image, generator)
    return image * (1 - mask) + source * mask, mask


def scar(image: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste-scar: a thin long stripe (width 2-16, length 10-25 px at 256 px, scaled) at a random angle."""
    _, height, width = image.shape
    scale = min(height, width) / 256
    thickness = max(1.0, _uniform(generator, 2, 16) * scale)
    length = max(3.0, _uniform(generator, 10, 25) * scale * 2)
    mask = _rotated_box(height, width, thickness, length, generator)
    source = _shifted(image, generator)
    return image * (1 - mask) + source * mask, mask


def otsu_foreground(image: torch.Tensor) -> torch.Tensor:
    """(H, W) 0/1 foreground of an object on a background, by Otsu's threshold on the gray levels.

    The side of the threshold that covers most of the image border is background. When the foreground
    is under 10% of the image (textures, flat scenes) the whole image counts as foreground.
    """
    gray = image.mean(0)
    hist = torch.histc(gray, bins=256, min=0, max=1)
    p = hist / hist.sum()
    levels = (torch.arange(256) + 0.5) / 256  # bin centres
    w0 = p.cumsum(0)
    mu = (p * levels).cumsum(0)
    between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1 - w0)).clamp_min(1e-12)  # Otsu's between-class variance
    foreground = gray >= (int(between.argmax()) + 1) / 256  # the upper edge of the best split's lower bin
    border = torch.cat([foreground[0], foreground[-1], foreground[:, 0], foreground[:, -1]])
    if border.float().mean() > 0.5:
        foreground = ~foreground
    if foreground.float().mean() < 0.1:
        return torch.ones_like(gray)
    return foreground.float()


def _flip_and_turn(stack: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One of the eight flips and quarter turns of a (C, H, W) stack, drawn uniformly."""
    if _uniform(generator) < 0.5:
        stack = stack.flip(2)
    return stack.rot90(_randint(generator, 0, 4), dims=(1, 2))


def real_copy(
    image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, transform: str = "flip"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A real anomaly shown as itself, image and mask varied jointly.

    "flip" mirrors it left-right half the time (the reference). "dihedral" draws any of the eight flips and
    quarter turns of the square image: the defect keeps its own tile and its place relative to the tile's
    edges, but ten anomalies become eighty distinct views, which are harder to memorise.
    """
    if transform == "flip":
        return (image.flip(2), mask.flip(1)) if _uniform(generator) < 0.5 else (image, mask)
    if transform != "dihedral":
        raise DataError(f"unknown real-anomaly transform '{transform}'; available: {', '.join(COPY_TRANSFORMS)}")
    if image.shape[1] != image.shape[2]:
        raise DataError(f"a dihedral transform needs a square image, got {image.shape[1]}x{image.shape[2]}")
    stack = _flip_and_turn(torch.cat([image, mask[None]]), generator)
    return stack[:-1], stack[-1]


def extended_anomaly(
    image: torch.Tensor,
    defect_image: torch.Tensor,
    defect_mask: torch.Tensor,
    generator: torch.Generator,
    foreground: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a real defect onto the foreground of a normal image (PRN's "extended" anomalies).

    The defect and its mask are augmented jointly (flip, quarter turn, scale 0.5-1.5, brightness), the
    defect's bounding box is cut out and its masked pixels are pasted centred on a random foreground pixel.
    Returns the unchanged image and an empty mask if the defect mask is empty.
    """
    _, height, width = image.shape
    if defect_mask.sum() == 0:
        return image.clone(), torch.zeros(height, width)
    stack = _flip_and_turn(torch.cat([defect_image, defect_mask[None]]), generator)  # the mask stays on the defect
    ys, xs = torch.nonzero(stack[3] > 0.5, as_tuple=True)
    crop = stack[:, int(ys.min()) : int(ys.max()) + 1, int(xs.min()) : int(xs.max()) + 1]
    scale = _uniform(generator, 0.5, 1.5)
    ch = max(1, min(height, round(crop.shape[1] * scale)))
    cw = max(1, min(width, round(crop.shape[2] * scale)))
    crop = F.interpolate(crop[None], size=(ch, cw), mode="bilinear", align_corners=False)[0]
    patch, patch_mask = _jitter(crop[:3], generator), (crop[3] > 0.5).float()
    region = foreground if foreground is not None and foreground.sum() > 0 else torch.ones(height, width)
    candidates = torch.nonzero(region > 0.5)
    cy, cx = candidates[_randint(generator, 0, len(candidates))].tolist()
    top, left = min(max(0, cy - ch // 2), height - ch), min(max(0, cx - cw // 2), width - cw)
    mask = torch.zeros(height, width)
    mask[top : top + ch, left : left + cw] = patch_mask
    pasted = image.clone()
    pasted[:, top : top + ch, left : left + cw] = patch
    return (image * (1 - mask) + pasted * mask).clamp(0, 1), mask


def synthesize(
    image: torch.Tensor, kind: str, generator: torch.Generator, textures: list[torch.Tensor] | None = None,
    beta_max: float = 0.8,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One synthetic anomaly of `kind` (perlin | cutpaste | scar)."""
    if kind == "perlin":
        return perlin_anomaly(image, generator, textures, beta_max)
    if kind == "cutpaste":
        return cutpaste(image, generator)
    if kind == "scar":
        return scar(image, generator)
    raise DataError(f"unknown synthetic anomaly '{kind}'; available: {', '.join(SYNTHETIC_KINDS)}")


def item_generator(*keys: int) -> torch.Generator:
    """A generator seeded from integers (seed, epoch, index...): the same keys always give the same draws."""
    seed = int(np.random.SeedSequence([k % 2**32 for k in keys]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)

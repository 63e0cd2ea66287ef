"""The one pre- and post-processing path shared by training, evaluation, `predict` and export.

Pre-processing: an (H, W, 3) float image in [0, 1] becomes a (3, S, S) tensor by bilinear
(antialiased) resizing; per-model normalisation happens inside the model so exports carry it.
Post-processing: a model-resolution anomaly map is resized back to the image's original size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def preprocess(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) float32 array in [0, 1] -> (3, size, size) float32 tensor in [0, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return tensor[0].clamp_(0.0, 1.0)


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """(H, W) bool mask -> (size, size) float tensor of 0/1, nearest neighbour."""
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(tensor, size=(size, size), mode="nearest")[0, 0]


def resize_map(anomaly_map: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) anomaly map at model resolution -> (H, W) float32 numpy array at the original size."""
    if tuple(anomaly_map.shape) != tuple(size):
        anomaly_map = F.interpolate(anomaly_map[None, None].float(), size=size, mode="bilinear", align_corners=False)[
            0, 0
        ]
    return anomaly_map.float().cpu().numpy()


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of overlapping tile x tile windows covering the image; one window per short side."""

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        stride = max(1, tile - overlap)
        positions = list(range(0, length - tile, stride))
        return positions + [length - tile]  # the last window ends exactly at the border

    return [(y, min(y + tile, height), x, min(x + tile, width)) for y in starts(height) for x in starts(width)]

"""Structural similarity (Wang et al., IEEE TIP 2004) with a Gaussian window, per pixel."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F


@lru_cache(maxsize=8)
def _window(size: int, sigma: float) -> np.ndarray:
    """(1, 1, size, size) normalised Gaussian window; a NumPy constant, so ONNX export sees a fixed kernel."""
    offsets = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(offsets**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)[None, None].astype(np.float32)


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of (B, C, H, W) images in [0, 1], averaged over channels: (B, H, W)."""
    kernel = torch.from_numpy(_window(window, sigma)).to(device=x.device, dtype=x.dtype)

    def blur(t: torch.Tensor) -> torch.Tensor:  # every channel alone, reflect-padded to keep the size
        planes = F.pad(t.flatten(0, 1).unsqueeze(1), (window // 2,) * 4, mode="reflect")
        return F.conv2d(planes, kernel).view_as(t)

    c1, c2 = 0.01**2, 0.03**2  # the paper's K1, K2 for a dynamic range of 1
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.mean(1)

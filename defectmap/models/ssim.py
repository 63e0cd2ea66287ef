"""Structural similarity (Wang et al., IEEE TIP 2004) with a Gaussian window, per pixel."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of (B, C, H, W) images in [0, 1], averaged over channels: (B, H, W)."""
    channels = x.shape[1]
    offsets = torch.arange(window, dtype=x.dtype, device=x.device) - window // 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    g = (g / g.sum()).view(1, 1, -1)
    kernel = (g.transpose(1, 2) @ g).expand(channels, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (window // 2,) * 4, mode="reflect"), kernel, groups=channels)

    c1, c2 = 0.01**2, 0.03**2  # the paper's K1, K2 for a dynamic range of 1
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.mean(1)

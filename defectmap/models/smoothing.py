"""Fixed Gaussian smoothing of anomaly maps (a depthwise convolution, so exports carry it)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GaussianBlur(nn.Module):
    """Separable Gaussian blur of (B, H, W) maps with reflect padding; sigma <= 0 is the identity."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma
        radius = max(1, math.ceil(3 * sigma)) if sigma > 0 else 0
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(offsets**2) / (2 * sigma**2)) if sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", kernel / kernel.sum(), persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return maps
        radius = len(self.kernel) // 2
        x = maps[:, None]
        pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        x = F.pad(x, (radius - pad,) * 4, mode="replicate") if pad < radius else x
        x = F.conv2d(x, self.kernel.view(1, 1, 1, -1))
        x = F.conv2d(x, self.kernel.view(1, 1, -1, 1))
        return x[:, 0]

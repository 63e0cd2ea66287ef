"""Memory modules shared by DAAD and PMB (after MemAE, Gong et al., ICCV 2019).

A memory holds N learnable items, trained by backpropagation only. A query reads
w = softmax(cos(q, m_i) / tau), hard-shrinks it, w_i <- relu(w_i - lambda) * w_i / (|w_i - lambda| + eps)
(MemAE eq. 7), renormalises to sum 1, and returns sum_i w_i m_i. An entropy term on w (MemAE eq. 10)
encourages sparse addressing. `BlockMemory` divides a feature map into b x b blocks, reads each
block from memory as one query of dimension C*b*b, and assembles the blocks back (DAAD).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def address(queries: torch.Tensor, items: torch.Tensor, temperature: float, shrink: float) -> torch.Tensor:
    """Addressing weights (..., Q, N) of queries (..., Q, D) over items (..., N, D); leading dims batch memories."""
    # Cosine similarity (MemAE's paper; its code used a dot product) sharpened by a temperature.
    similarity = F.normalize(queries, dim=-1) @ F.normalize(items, dim=-1).transpose(-1, -2)
    weights = torch.softmax(similarity / temperature, dim=-1)
    if shrink > 0:
        shifted = weights - shrink
        weights = F.relu(shifted) * weights / (shifted.abs() + 1e-12)
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    return weights


class Memory(nn.Module):
    """N items of dimension D; `forward(queries (Q, D)) -> (read-out (Q, D), weights (Q, N))`."""

    def __init__(self, *, items: int, dim: int, temperature: float = 0.1, shrink: float | None = None):
        super().__init__()
        self.items = nn.Parameter(torch.randn(items, dim) / math.sqrt(dim))
        self.temperature = temperature
        self.shrink = 1.0 / items if shrink is None else shrink  # MemAE's lambda, in [1/N, 3/N]

    def address(self, queries: torch.Tensor) -> torch.Tensor:
        return address(queries, self.items, self.temperature, self.shrink)

    def forward(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.address(queries)
        return weights @ self.items, weights


def query_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy of each query's addressing weights (..., N) -> (...); exp of it is the items read, in effect."""
    return -(weights * torch.log(weights + 1e-12)).sum(-1)


def addressing_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Mean entropy of addressing weights (..., N) over all queries; minimising it makes addressing sparse."""
    return query_entropy(weights).mean()


def divide_blocks(features: torch.Tensor, block: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * L, C * block * block): one row per non-overlapping block."""
    b, c, h, w = features.shape
    if h % block or w % block:
        raise ValueError(f"feature map {h}x{w} is not divisible by block size {block}")
    # Non-overlapping blocks as a reshape (the same layout as unfold(kernel=b, stride=b), but exportable).
    blocks = features.reshape(b, c, h // block, block, w // block, block).permute(0, 2, 4, 1, 3, 5)
    return blocks.reshape(-1, c * block * block)


def assemble_blocks(rows: torch.Tensor, shape: torch.Size, block: int) -> torch.Tensor:
    """Inverse of `divide_blocks`: (B * L, C * block * block) -> (B, C, H, W)."""
    b, c, h, w = shape
    blocks = rows.reshape(b, h // block, w // block, c, block, block).permute(0, 3, 1, 4, 2, 5)
    return blocks.reshape(b, c, h, w)


class BlockMemory(nn.Module):
    """DAAD's block-wise memory: divide into b x b blocks, rebuild each from memory, assemble back."""

    def __init__(self, *, channels: int, block: int, items: int, temperature: float = 0.1):
        super().__init__()
        self.block = block
        self.memory = Memory(items=items, dim=channels * block * block, temperature=temperature)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        read, weights = self.memory(divide_blocks(features, self.block))
        return assemble_blocks(read, features.shape, self.block), weights

"""PMB: Partition Memory Bank autoencoder (Xing and Li, IEEE TCSVT 33(8), 2023, arXiv 2209.12441).

Skip features are partitioned into a G x G spatial grid and every cell has its own memory of normal
features, so a query is rebuilt from what is normal *at that place*; queries come from a k x k
convolution so they carry their neighbourhood (context-keeping queries). Memory skips and plain
skips alternate across decoder levels (or, with `alternate_per_step`, per training step), so
normal detail passes while anomalies are rebuilt badly. The pixel map is the squared reconstruction
error (or 1 - SSIM with `error: ssim`); Histogram Error Estimation is the `postprocess.hee` filter
(hee.py). The paper's full text was not available: grid, kernel, memory size and the alternation pattern
below are [ours] (METHODS.md) and config fields. `denoise_share` (ours, off by default) trains on anomalous
inputs with the clean image as the target (see ae.denoising_mix).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from defectmap.errors import ConfigError
from defectmap.models.ae import (
    ErrorMapModel,
    ReconstructionError,
    bottleneck_block,
    denoising_mix,
    encode,
    encoder_stages,
    output_head,
    rebuild_target,
    stage_multiple,
)
from defectmap.models.daad import DecoderStage
from defectmap.models.hee import ErrorMapFilter, PostprocessConfig
from defectmap.models.memory import address, addressing_entropy


@dataclass
class PMBConfig:
    channels: tuple[int, ...] = (16, 32, 64, 128)  # one stride-2 encoder stage each
    latent_channels: int = 32  # 1x1 bottleneck width of the deepest stage
    # Skip type per level below the deepest (level 0 = shallowest): "pmb", "plain" or "none".
    skips: tuple[str, ...] = ("pmb", "plain", "pmb")
    alternate_per_step: bool = False  # training: each step, each pmb/plain level draws its type at random
    grid: int = 4  # G x G partitions per memory level, one memory each
    query_kernel: int = 3  # k x k convolution forming context-keeping queries
    memory_items: int = 64  # items per partition memory
    temperature: float = 0.1  # of the cosine addressing softmax
    entropy_weight: float = 2e-4  # MemAE's sparse-addressing term
    error: str = "l2"  # pixel map: l2 (squared error, channel mean) | ssim (1 - SSIM) | features, as the AE's
    feature_backbone: str = "efficientnet_lite0"  # error=features: as the AE's
    feature_levels: tuple[int, ...] = (0, 1, 2)  # error=features: as the AE's
    feature_weights: str = ""  # error=features: as the AE's
    smoothing_sigma: float = 4.0  # Gaussian sigma of the error map, in model pixels
    denoise_share: float = 0.0  # as the AE's: training images given a synthetic anomaly, rebuilt clean (ours)


class PartitionMemoryBank(nn.Module):
    """G x G partitions of a feature map, each read from its own memory with k x k context queries."""

    def __init__(self, *, channels: int, grid: int, items: int, kernel: int, temperature: float):
        super().__init__()
        self.grid, self.temperature, self.shrink = grid, temperature, 1.0 / items
        self.query = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.items = nn.Parameter(torch.randn(grid * grid, items, channels) / channels**0.5)  # (G*G, N, C)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = features.shape
        g = self.grid
        if h % g or w % g:
            raise ConfigError(f"feature map {h}x{w} is not divisible by the partition grid {g}")
        queries = self.query(features).reshape(b, c, g, h // g, g, w // g)
        queries = queries.permute(2, 4, 0, 3, 5, 1).reshape(g * g, -1, c)  # (G*G, B*h'*w', C) per cell
        weights = address(queries, self.items, self.temperature, self.shrink)  # (G*G, Q, N)
        read = (weights @ self.items).reshape(g, g, b, h // g, w // g, c).permute(2, 5, 0, 3, 1, 4)
        return read.reshape(b, c, h, w), weights


def bank_levels(cfg: PMBConfig) -> list[int]:
    """The skip levels with a partition memory bank: pmb levels, and plain ones that may draw pmb per step."""
    return [
        level for level, kind in enumerate(cfg.skips) if kind == "pmb" or (kind == "plain" and cfg.alternate_per_step)
    ]


class PMB(ErrorMapModel):
    Config = PMBConfig
    positive = ("channels", "latent_channels", "grid", "query_kernel", "memory_items", "temperature")

    def __init__(self, cfg: PMBConfig, post: PostprocessConfig | None = None):
        super().__init__()
        if len(cfg.skips) != len(cfg.channels) - 1 or not set(cfg.skips) <= {"pmb", "plain", "none"}:
            raise ConfigError(f"model.skips needs {len(cfg.channels) - 1} entries of pmb, plain or none")
        if cfg.query_kernel % 2 == 0:
            raise ConfigError(
                f"model.query_kernel must be odd (a window centred on each position), got {cfg.query_kernel}"
            )
        self.cfg = cfg
        self.error = ReconstructionError(cfg)
        self.encoder = nn.ModuleList(encoder_stages(cfg.channels))
        self.bottleneck = bottleneck_block(cfg.channels[-1], cfg.latent_channels)
        self.banks = nn.ModuleDict(
            {
                str(level): PartitionMemoryBank(
                    channels=cfg.channels[level],
                    grid=cfg.grid,
                    items=cfg.memory_items,
                    kernel=cfg.query_kernel,
                    temperature=cfg.temperature,
                )  # fmt: skip
                for level in bank_levels(cfg)
            }
        )
        self.decoder = nn.ModuleList(
            DecoderStage(
                cfg.channels[level + 1], 0 if cfg.skips[level] == "none" else cfg.channels[level], cfg.channels[level]
            )  # fmt: skip
            for level in range(len(cfg.channels) - 2, -1, -1)
        )
        self.head = output_head(cfg.channels[0])
        self.error_filter = ErrorMapFilter(post or PostprocessConfig(), cfg.smoothing_sigma)
        self.anomaly_mix = denoising_mix(cfg.denoise_share)

    @staticmethod
    def input_rule(cfg: PMBConfig) -> tuple[int, int]:
        # Each bank level's feature map (stride 2**(level + 1)) must split into the G x G partitions.
        sides = [2 ** (level + 1) * cfg.grid for level in bank_levels(cfg)]
        multiple = math.lcm(stage_multiple(cfg.channels), *sides)
        return multiple, multiple

    def _skip_kind(self, level: int) -> str:
        kind = self.cfg.skips[level]
        if self.training and self.cfg.alternate_per_step and kind in ("pmb", "plain"):
            return "pmb" if torch.rand(()) < 0.5 else "plain"
        return kind

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(reconstruction (B, 3, H, W), addressing weights of the memory levels used)."""
        features = encode(self.encoder, images)
        x = self.bottleneck(features[-1])
        weights = []
        for stage, level in zip(self.decoder, range(len(features) - 2, -1, -1), strict=True):
            kind, skip = self._skip_kind(level), None
            if kind == "pmb":
                skip, w = self.banks[str(level)](features[level])
                weights.append(w)
            elif kind == "plain":
                skip = features[level]
            x = stage(x, skip)
        return torch.sigmoid(self.head(x)), weights

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        recon, weights = self.reconstruct(batch["image"])
        losses = {"mse": F.mse_loss(recon, rebuild_target(batch))}
        losses["entropy"] = (
            torch.stack([addressing_entropy(w) for w in weights]).mean() if weights else recon.new_zeros(())
        )
        losses["loss"] = losses["mse"] + self.cfg.entropy_weight * losses["entropy"]
        return losses

    def difference(self, images: torch.Tensor) -> torch.Tensor:
        return self.error(images, self.reconstruct(images)[0])  # (B, H, W)

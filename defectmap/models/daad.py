"""DAAD: Divide-and-Assemble (Hou et al., ICCV 2021, arXiv 2107.13118).

A U-Net-like autoencoder whose skip connections pass through block-wise memories: each skip feature
map is divided into b x b blocks, every block is rebuilt from a memory of normal blocks and the
blocks are assembled back. The block size (granularity) sets how well anomalies can be rebuilt.
The pixel map is the squared reconstruction error, or 1 - SSIM with `error: ssim` (METHODS.md's "optionally
SSIM-based"), then the `postprocess` filters and Gaussian smoothing.
DAAD+ adds a discriminator: adversarial and latent feature-matching losses, and the distance between
the discriminator's latent features of an image and of its reconstruction as a second image score,
fused with the map maximum after standardising both on validation normals; the latent share is chosen
on synthetic anomalies pasted into the validation normals (`fusion`), no real anomaly involved.
`denoise_share` (ours, off by default) trains on anomalous inputs with the clean image as the reconstruction target
and as the discriminator's real image (see ae.denoising_mix).
The paper's full text was not available; the choices below follow METHODS.md ([ours] entries).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from defectmap.errors import ConfigError
from defectmap.metrics import image_auroc
from defectmap.models.ae import (
    RECONSTRUCTION_TRAINING,
    ReconstructionError,
    bottleneck_block,
    denoising_mix,
    encode,
    encoder_stages,
    output_head,
    rebuild_target,
    stage_multiple,
)
from defectmap.models.base import AnomalyModel, Output
from defectmap.models.hee import ErrorMapFilter, PostprocessConfig
from defectmap.models.memory import BlockMemory, addressing_entropy
from defectmap.models.ssim import ssim_map


@dataclass
class DAADConfig:
    channels: tuple[int, ...] = (16, 32, 64, 128)  # one stride-2 encoder stage each
    latent_channels: int = 32  # 1x1 bottleneck width of the deepest stage
    # Skip levels (0 = shallowest, stride 2) that pass through block memories; other levels have no skip,
    # since a plain skip would carry anomalies straight to the output.
    memory_levels: tuple[int, ...] = (0, 1, 2)
    block_sizes: tuple[int, ...] = (8, 4, 2)  # per memory level; the default covers 16x16 input pixels at each
    # manual: block_sizes as given | auto: short runs per auto_scales, the best on synthetic anomalies in
    # the validation normals wins (defectmap/granularity.py); the run then records "auto:<scale>".
    granularity: str = "manual"
    auto_scales: tuple[int, ...] = (1, 2, 4, 8, 16)  # granularity=auto: block scales tried
    auto_epochs: int = 5  # epochs of each trial run
    memory_items: tuple[int, ...] = (256, 256, 256)  # memory size per memory level
    temperature: float = 0.1  # of the cosine addressing softmax
    entropy_weight: float = 2e-4  # MemAE's sparse-addressing term
    ssim_weight: float = 0.0  # reconstruction loss = MSE + ssim_weight * (1 - SSIM)
    adversarial: bool = True  # DAAD+ (discriminator, adversarial and feature-matching losses); false = DAAD
    adversarial_weight: float = 0.01  # weight of the generator's adversarial term
    # bce: non-saturating BCE for both players | hinge: the discriminator's hinge loss, the generator's -D(x_hat)
    # (METHODS.md allows either; chance level is 2 ln 2 = 1.386 for bce and 2 for hinge).
    gan_loss: str = "bce"
    # The discriminator's Adam learning rate = train.lr x this (two time-scale updates, TTUR, Heusel et al. 2017).
    discriminator_lr_scale: float = 1.0
    feature_matching_weight: float = 1.0  # ||f_D(x) - f_D(x_hat)||^2 on the discriminator's latent features
    discriminator_channels: tuple[int, ...] = (32, 64, 128, 256)  # one stride-2 stage each (DAAD+)
    latent_weight: float = 0.5  # share of the normalised latent distance in the image score (DAAD+)
    # synthetic: after training, latent_weight becomes the value of fusion_weights with the best image AUROC
    # on the validation normals with synthetic anomalies (the checkpoint records it) | fixed: as given.
    fusion: str = "synthetic"
    fusion_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # fusion=synthetic: latent shares tried
    error: str = "l2"  # pixel map: l2 (squared error, channel mean) | ssim (1 - SSIM) | features, as the AE's
    feature_backbone: str = "efficientnet_lite0"  # error=features: as the AE's
    feature_levels: tuple[int, ...] = (0, 1, 2)  # error=features: as the AE's
    feature_weights: str = ""  # error=features: as the AE's
    smoothing_sigma: float = 4.0  # Gaussian sigma of the error map, in model pixels
    denoise_share: float = 0.0  # as the AE's: training images given a synthetic anomaly, rebuilt clean (ours)


def block_sizes(scale: int, levels: tuple[int, ...] | range) -> tuple[int, ...]:
    """Scale s: memory level l gets b x b blocks with b = max(1, s // 2**l) (the granularity study and
    automatic granularity)."""
    return tuple(max(1, scale // 2**level) for level in levels)


class DecoderStage(nn.Module):
    """Upsample x2, concatenate the (memory-read) skip features if any, two 3x3 convolutions."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c_in + c_skip, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(x if skip is None else torch.cat([x, skip], 1))


class Discriminator(nn.Module):
    """DCGAN-style conv net with spectral norm: (patch logits (B, h, w), latent features (B, F))."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        layers, c_in = [], 3
        for c_out in channels:
            layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.logits = spectral_norm(nn.Conv2d(c_in, 1, 3, padding=1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(images)
        return self.logits(features)[:, 0], features.mean((2, 3))


class DAAD(AnomalyModel):
    Config = DAADConfig
    positive = (
        "channels",
        "latent_channels",
        "block_sizes",
        "auto_scales",
        "auto_epochs",
        "memory_items",
        "temperature",
        "discriminator_channels",
        "discriminator_lr_scale",
    )
    train_defaults = RECONSTRUCTION_TRAINING

    def __init__(self, cfg: DAADConfig, post: PostprocessConfig | None = None):
        super().__init__()
        if not len(cfg.memory_levels) == len(cfg.block_sizes) == len(cfg.memory_items):
            raise ConfigError("model.memory_levels, model.block_sizes and model.memory_items need equal lengths")
        if any(level >= len(cfg.channels) - 1 for level in cfg.memory_levels):
            raise ConfigError(f"model.memory_levels must be below the deepest level {len(cfg.channels) - 1}")
        if cfg.fusion not in ("synthetic", "fixed"):
            raise ConfigError(f"model.fusion must be synthetic or fixed, got '{cfg.fusion}'")
        if cfg.gan_loss not in ("bce", "hinge"):
            raise ConfigError(f"model.gan_loss must be bce or hinge, got '{cfg.gan_loss}'")
        if cfg.granularity not in ("manual", "auto") and not cfg.granularity.startswith("auto:"):
            raise ConfigError(f"model.granularity must be manual or auto, got '{cfg.granularity}'")
        self.cfg = cfg
        self.error = ReconstructionError(cfg)
        self.encoder = nn.ModuleList(encoder_stages(cfg.channels))
        self.bottleneck = bottleneck_block(cfg.channels[-1], cfg.latent_channels)
        self.memories = nn.ModuleDict(
            {
                str(level): BlockMemory(
                    channels=cfg.channels[level], block=block, items=items, temperature=cfg.temperature
                )
                for level, block, items in zip(cfg.memory_levels, cfg.block_sizes, cfg.memory_items, strict=True)
            }
        )
        self.decoder = nn.ModuleList()
        for level in range(len(cfg.channels) - 2, -1, -1):  # stage producing level `level`'s resolution
            skip = cfg.channels[level] if level in cfg.memory_levels else 0
            self.decoder.append(DecoderStage(cfg.channels[level + 1], skip, cfg.channels[level]))
        self.head = output_head(cfg.channels[0])
        self.discriminator = Discriminator(cfg.discriminator_channels) if cfg.adversarial else None
        self.error_filter = ErrorMapFilter(post or PostprocessConfig(), cfg.smoothing_sigma)
        self.anomaly_mix = denoising_mix(cfg.denoise_share)
        # Image-score statistics of normal validation images: (map max, latent distance) mean and std.
        self.register_buffer("score_mean", torch.zeros(2))
        self.register_buffer("score_std", torch.ones(2))

    @staticmethod
    def input_rule(cfg: DAADConfig) -> tuple[int, int]:
        # Each memory level's feature map (stride 2**(level + 1)) must split into whole blocks, for every
        # block scheme the run may use (with granularity=auto, each trial's).
        auto = cfg.granularity == "auto"
        schemes = [block_sizes(s, cfg.memory_levels) for s in cfg.auto_scales] if auto else [cfg.block_sizes]
        sides = [
            2 ** (level + 1) * b
            for blocks in schemes
            for level, b in zip(cfg.memory_levels, blocks, strict=False)  # unequal lengths: __init__ says so
        ]
        multiple = math.lcm(stage_multiple(cfg.channels), *sides)
        return multiple, multiple

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(reconstruction (B, 3, H, W), addressing weights of every memory level)."""
        features = encode(self.encoder, images)
        x = self.bottleneck(features[-1])
        weights = []
        for stage, level in zip(self.decoder, range(len(features) - 2, -1, -1), strict=True):
            skip = None
            if str(level) in self.memories:
                skip, w = self.memories[str(level)](features[level])
                weights.append(w)
            x = stage(x, skip)
        return torch.sigmoid(self.head(x)), weights

    def load_weights(self) -> None:
        self.error.load_weights()

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        generator = [
            p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("discriminator.")
        ]
        groups = {"loss": generator}
        if self.discriminator is not None:
            groups["discriminator_loss"] = list(self.discriminator.parameters())
        return groups

    def lr_scales(self) -> dict[str, float]:
        return {"discriminator_loss": self.cfg.discriminator_lr_scale} if self.discriminator is not None else {}

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        target = rebuild_target(batch)  # the clean image: what the reconstruction and the discriminator see as real
        recon, weights = self.reconstruct(batch["image"])
        losses = {"mse": F.mse_loss(recon, target)}
        losses["entropy"] = (
            torch.stack([addressing_entropy(w) for w in weights]).mean() if weights else recon.new_zeros(())
        )
        total = losses["mse"] + self.cfg.entropy_weight * losses["entropy"]
        if self.cfg.ssim_weight > 0:
            losses["ssim"] = (1 - ssim_map(target, recon)).mean()
            total = total + self.cfg.ssim_weight * losses["ssim"]
        if self.discriminator is not None:
            real_logits, real_latent = self.discriminator(target)
            fake_logits, fake_latent = self.discriminator(recon)
            losses["adversarial"] = self.generator_adversarial(fake_logits)
            losses["feature_matching"] = F.mse_loss(fake_latent, real_latent.detach())
            total = total + self.cfg.adversarial_weight * losses["adversarial"]
            total = total + self.cfg.feature_matching_weight * losses["feature_matching"]
            detached_logits, _ = self.discriminator(recon.detach())
            losses["discriminator_loss"] = self.discriminator_objective(real_logits, detached_logits)
        losses["loss"] = total
        return losses

    def generator_adversarial(self, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.cfg.gan_loss == "hinge":
            return -fake_logits.mean()
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))

    def discriminator_objective(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.cfg.gan_loss == "hinge":
            return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        return real + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))

    def validation_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Early stopping follows reconstruction quality; adversarial terms oscillate by design.
        recon, _ = self.reconstruct(batch["image"])
        return F.mse_loss(recon, rebuild_target(batch))

    def difference(self, images: torch.Tensor) -> torch.Tensor:
        return self.error(images, self.reconstruct(images)[0])  # (B, H, W)

    def _raw_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon, _ = self.reconstruct(images)
        maps = self.error_filter(self.error(images, recon))  # (B, H, W)
        if self.discriminator is None:
            return maps, maps.flatten(1).amax(1)[:, None]
        _, real_latent = self.discriminator(images)
        _, fake_latent = self.discriminator(recon)
        latent_distance = (real_latent - fake_latent).pow(2).mean(1)
        return maps, torch.stack([maps.flatten(1).amax(1), latent_distance], 1)

    @torch.no_grad()
    def calibrate(
        self, batches: Iterable[torch.Tensor], probe: Iterable[tuple[torch.Tensor, torch.Tensor]] = ()
    ) -> dict:
        batches = list(batches)  # read twice: the error filter's statistics first, then the score statistics
        self.error_filter.fit(self.difference(images) for images in batches)
        raw = torch.cat([self._raw_scores(images)[1] for images in batches])  # (N, 1 or 2)
        self.score_mean[: raw.shape[1]] = raw.mean(0)
        self.score_std[: raw.shape[1]] = raw.std(0).clamp_min(1e-8) if len(raw) > 1 else 1.0
        if self.discriminator is None or self.cfg.fusion == "fixed":
            return {}
        # The paper leaves the fusion open; the latent distance can be uninformative on a dataset (on Magnetic
        # Tile it scores near chance), so its share is chosen on synthetic anomalies, without real ones.
        raws, labels = [], []
        for images, batch_labels in probe:
            raws.append(self._raw_scores(images)[1].cpu())
            labels.append(batch_labels.cpu())
        if not raws:
            return {}
        z = (torch.cat(raws) - self.score_mean.cpu()) / self.score_std.cpu()  # (N, 2)
        labels_np = torch.cat(labels).numpy()
        aurocs = [image_auroc(labels_np, ((1 - w) * z[:, 0] + w * z[:, 1]).numpy()) for w in self.cfg.fusion_weights]
        if np.isnan(aurocs).all():  # the probe holds one class only
            return {}
        self.cfg.latent_weight = float(self.cfg.fusion_weights[int(np.nanargmax(aurocs))])  # ties: the smaller
        return {"latent_weight": self.cfg.latent_weight}

    def forward(self, images: torch.Tensor) -> Output:
        maps, raw = self._raw_scores(images)
        if self.discriminator is None:
            return Output(raw[:, 0], maps)
        # Fuse the two scores after standardising each on normal validation images.
        z = (raw - self.score_mean) / self.score_std
        score = (1 - self.cfg.latent_weight) * z[:, 0] + self.cfg.latent_weight * z[:, 1]
        return Output(score, maps)

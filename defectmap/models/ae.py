"""Plain convolutional autoencoder: the baseline every method is compared with.

Pixel map = per-pixel squared reconstruction error (or 1 - SSIM, or the distance of frozen ImageNet features),
Gaussian smoothed; image score = max of the map. Trained with MSE, optionally plus an SSIM term, and optionally
(`denoise_share`, ours) to rebuild the clean image from one with a synthetic anomaly pasted in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from defectmap.data.synthetic import AnomalyMix
from defectmap.errors import ConfigError
from defectmap.models.backbone import BACKBONES, FrozenBackbone
from defectmap.models.base import AnomalyModel, Output
from defectmap.models.hee import ErrorMapFilter, PostprocessConfig
from defectmap.models.ssim import ssim_map


@dataclass
class AEConfig:
    channels: tuple[int, ...] = (16, 32, 64, 128)  # one stride-2 encoder stage per entry
    latent_channels: int = 32  # 1x1 bottleneck width: the information limit that makes defects hard to rebuild
    ssim_weight: float = 0.0  # loss = MSE + ssim_weight * (1 - SSIM)
    error: str = "l2"  # pixel map: l2 (squared error, channel mean) | ssim (1 - SSIM) | features (see below)
    # error=features: squared distance of frozen ImageNet features of the image and its reconstruction, at these
    # backbone levels (0-3: strides 4, 8, 16, 32); weights from feature_weights, else the package / hub file.
    feature_backbone: str = "efficientnet_lite0"
    feature_levels: tuple[int, ...] = (0, 1, 2)  # error=features: backbone levels summed into the map
    feature_weights: str = ""  # error=features: a local weights file; empty: the package / hub file
    smoothing_sigma: float = 4.0  # Gaussian sigma of the map, in model pixels
    # Share of training images given a synthetic anomaly (data.texture_dir), rebuilt to the clean image (ours)
    denoise_share: float = 0.0


def down_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


def up_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def encoder_stages(channels: tuple[int, ...]) -> list[nn.Sequential]:
    """One stride-2 `down_block` per width, from RGB input."""
    widths = (3, *channels)
    return [down_block(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]


def stage_multiple(channels: tuple[int, ...]) -> int:
    """The input side must be a multiple of this for `encoder_stages(channels)` and a decoder to match shapes."""
    return 2 ** len(channels)


def encode(stages: nn.ModuleList, images: torch.Tensor) -> list[torch.Tensor]:
    """The feature map after every encoder stage, shallowest first (the skip inputs of DAAD and PMB)."""
    features, x = [], images
    for stage in stages:
        x = stage(x)
        features.append(x)
    return features


def bottleneck_block(channels: int, latent: int) -> nn.Sequential:
    """1x1 squeeze to `latent` channels and back: the information limit of the deepest level."""
    return nn.Sequential(
        nn.Conv2d(channels, latent, 1),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(latent, channels, 1),
        nn.ReLU(inplace=True),
    )


def output_head(channels: int) -> nn.Sequential:
    """The last upsampling to full resolution with a single light convolution (full-resolution convs dominate
    CPU cost), to RGB logits."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(channels, 3, 3, padding=1)
    )


ERROR_KINDS = ("l2", "ssim", "features")


def denoising_mix(share: float) -> AnomalyMix | None:
    """`model.denoise_share` of the reconstruction models [ours, from DRAEM's reconstructive network, not from the
    DAAD or PMB papers]: that share of the training images gets a synthetic anomaly (the synthesis library's Perlin,
    CutPaste and scar kinds; textures from `data.texture_dir`), and the loss compares the reconstruction with the
    clean image, so the model learns to replace what a normal part does not show instead of copying it through. The
    validation loss that picks the checkpoint does the same on the validation normals with fixed anomalies.
    0 (the default, the papers' training): normal images only."""
    if not 0 <= share <= 1:
        raise ConfigError(f"model.denoise_share must be in [0, 1] (0 turns it off), got {share}")
    return AnomalyMix(normal_share=1.0 - share, real_share=0.0, clean_target=True) if share else None


def rebuild_target(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a reconstruction model's loss compares its output with: the clean image when the batch carries one."""
    return batch.get("clean", batch["image"])


class ReconstructionError(nn.Module):
    """`(images, reconstructions) -> (B, H, W)` per-pixel error of the kind `model.error` names.

    `features` [ours, not from the DAAD or PMB papers]: the squared distance between frozen ImageNet features of
    the image and of its reconstruction (channel mean per level, each level upsampled to the input, summed). On
    grainy surfaces no reconstruction model rebuilds the grain, and a pixel error is dominated by it; pretrained
    features change less with grain than with structure. The backbone is frozen (eval mode, no gradients) and
    trains nothing; a checkpoint carries its weights.
    """

    def __init__(self, cfg):
        super().__init__()
        if cfg.error not in ERROR_KINDS:
            raise ConfigError(f"model.error must be {', '.join(ERROR_KINDS)}, got '{cfg.error}'")
        self.kind = cfg.error
        self.backbone = None
        if cfg.error == "features":
            if cfg.feature_backbone not in BACKBONES:
                names = ", ".join(BACKBONES)
                raise ConfigError(f"model.feature_backbone must be one of {names}, got '{cfg.feature_backbone}'")
            if not cfg.feature_levels or not set(cfg.feature_levels) <= {0, 1, 2, 3}:
                raise ConfigError(f"model.feature_levels must list backbone levels 0-3, got {cfg.feature_levels}")
            self.levels, self.weights = tuple(cfg.feature_levels), cfg.feature_weights
            self.backbone = FrozenBackbone(cfg.feature_backbone)

    def load_weights(self) -> None:
        """The backbone's ImageNet weights, for training: random features would measure nothing."""
        if self.backbone is not None:
            self.backbone.load_pretrained(self.weights)

    def forward(self, images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        if self.kind == "l2":
            return (images - recon).pow(2).mean(1)
        if self.kind == "ssim":
            return 1.0 - ssim_map(images, recon)
        with torch.no_grad():  # a scoring step only: the reconstruction loss stays MSE
            features = self.backbone(torch.cat([images, recon]), depth=max(self.levels) + 1)  # both in one pass
        error = images.new_zeros(images.shape[0], 1, *images.shape[-2:])
        for level in self.levels:
            original, rebuilt = features[level].float().chunk(2)
            distance = (original - rebuilt).pow(2).mean(1, keepdim=True)  # (B, 1, h, w)
            error = error + F.interpolate(distance, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return error[:, 0]


# The optimizer steps the reconstruction models' results on Magnetic Tile were measured with: 15 epochs of 42 steps,
# its 685 good training images at batch 16. On a few dozen images a run trains as many steps rather than 50 epochs of
# one step, which localised worse (AU-PRO 0.44 to 0.49 against 0.55 to 0.58 on 25 images); on hundreds of images
# train.epochs takes more anyway (README, "How many good images does a line need?").
RECONSTRUCTION_TRAINING = {"min_steps": 630}


class ErrorMapModel(AnomalyModel):
    """A reconstruction model scored by its filtered error map alone: map = error_filter(difference), score = max.

    Subclasses set `self.error` and `self.error_filter` and define `difference(images) -> (B, H, W)`; calibration
    fits the filter's statistics (position normalisation, HEE) on the normal validation images.
    """

    error: ReconstructionError
    error_filter: ErrorMapFilter
    train_defaults = RECONSTRUCTION_TRAINING

    def load_weights(self) -> None:
        self.error.load_weights()

    def difference(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor], probe: Iterable = ()) -> dict:
        self.error_filter.fit(self.difference(images) for images in batches)
        return {}

    def forward(self, images: torch.Tensor) -> Output:
        maps = self.error_filter(self.difference(images))  # (B, H, W)
        return Output(maps.flatten(1).amax(1), maps)


class Autoencoder(ErrorMapModel):
    Config = AEConfig
    positive = ("channels", "latent_channels")

    def __init__(self, cfg: AEConfig, post: PostprocessConfig | None = None):
        super().__init__()
        self.cfg = cfg
        self.error = ReconstructionError(cfg)
        widths = (3, *cfg.channels)
        self.encoder = nn.Sequential(*encoder_stages(cfg.channels))
        self.bottleneck = bottleneck_block(widths[-1], cfg.latent_channels)
        rev = widths[::-1][:-1]  # (256, 128, 64, 32)
        self.decoder = nn.Sequential(*[up_block(a, b) for a, b in zip(rev[:-1], rev[1:], strict=True)])
        self.head = output_head(rev[-1])
        self.error_filter = ErrorMapFilter(post or PostprocessConfig(), cfg.smoothing_sigma)
        self.anomaly_mix = denoising_mix(cfg.denoise_share)

    @staticmethod
    def input_rule(cfg: AEConfig) -> tuple[int, int]:
        return stage_multiple(cfg.channels), stage_multiple(cfg.channels)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.decoder(self.bottleneck(self.encoder(images)))))

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        target = rebuild_target(batch)
        recon = self.reconstruct(batch["image"])
        mse = F.mse_loss(recon, target)
        losses = {"mse": mse}
        total = mse
        if self.cfg.ssim_weight > 0:
            losses["ssim"] = (1 - ssim_map(target, recon)).mean()
            total = total + self.cfg.ssim_weight * losses["ssim"]
        losses["loss"] = total
        return losses

    def difference(self, images: torch.Tensor) -> torch.Tensor:
        return self.error(images, self.reconstruct(images))  # (B, H, W)

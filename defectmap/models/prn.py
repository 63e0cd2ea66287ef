"""PRN: Prototypical Residual Networks (Zhang et al., CVPR 2023, arXiv 2212.02031).

A frozen ImageNet backbone gives features at strides 4, 8, 16 (prototype levels) and 32 (decoder input).
Per level, the normal training images' whole feature maps are clustered by k-means into prototypes; an
input's residual against its nearest prototype, (f - p)^2, exposes what no normal pattern explains.
Features and residuals are fused per level, exchanged across levels, refined by multi-size
self-attention, and a U-Net decoder outputs one logit per pixel. Trained on normal images, synthetic
anomalies and optionally k real ones (see data/dataset.py `AnomalyMixDataset`) with SmoothL1 + 5 x focal.
Image score: mean of the top-k pixel probabilities, k scaled with the map area (`top_k_size`).

Choices the paper leaves open (config fields): at most `max_prototypes` prototypes per level (10% of the
training images below that; fewer are padded by repetition, which leaves every nearest-prototype search
unchanged); cross-level exchange resamples by bilinear upsampling / average pooling before a 1x1 conv
(the reference uses strided depthwise convs downwards); multi-size attention splits the channels into one
group per window size, each attending among the positions inside its non-overlapping windows, with
windows capped at `max_window` positions a side (at 256^2 input the stride-4 map's whole-map window
would be 64 x 64 = 4096 tokens, which made a CPU training step 7x slower); 2 attention layers per
level instead of the reference's 3, and 12 epochs of batch 8 by default, for the CPU budget. Of the real-anomaly
draws, `real_copy_share` show the real image itself, varied by `real_copy_transform` (mirroring, as the
reference, or all eight flips and quarter turns); the rest paste its defect onto a normal image. With
`real_negatives=false` (ours) a real image shown as itself trains only its marked pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from defectmap.data.synthetic import COPY_TRANSFORMS, AnomalyMix
from defectmap.errors import ConfigError
from defectmap.models.backbone import FrozenBackbone
from defectmap.models.base import AnomalyModel, Output
from defectmap.models.hee import PostprocessConfig
from defectmap.models.smoothing import GaussianBlur


@dataclass
class PRNConfig:
    backbone: str = "efficientnet_lite0"  # efficientnet_lite0 | resnet18 | wide_resnet50_2
    pretrained: bool = True  # load ImageNet weights before fitting prototypes (False: random init, tests)
    weights: str = ""  # local weights file; empty: the package file (lite0) or the torch hub cache (ResNets)
    max_prototypes: int = 64  # per level; 10% of the training images when that is fewer
    prototype_fraction: float = 0.1  # prototypes per level = this share of the training images, at most max
    kmeans_iterations: int = 25  # of the k-means that fits the prototypes
    width: int = 64  # channels of every fused level
    window_divisions: tuple[int, ...] = (1, 2, 4, 8)  # attention windows of size H/d for each d (multi-size)
    max_window: int = 16  # window side cap in positions: attention cost stays linear in the map size
    attention_layers: int = 2  # per level (the reference uses 3)
    decoder_channels: tuple[int, ...] = (64, 48, 32, 16)  # U-Net decoder stages, deepest first
    focal_weight: float = 5.0  # loss = SmoothL1 + focal_weight * focal loss
    focal_gamma: float = 4.0  # the focal loss's gamma
    top_k: int = 100  # image score: mean of the top-k pixel probabilities of a top_k_size^2 map
    # The reference's top-100 is for 256^2 inputs; k scales with the map's area so the score averages the
    # same share of the image at any data.image_size (25 pixels at 128^2).
    top_k_size: int = 256
    smoothing_sigma: float = 2.0  # Gaussian sigma of the output map, in model pixels (0: none)
    # Training mix (ref): share of normal images, of real + "extended" anomalies (k > 0), rest synthetic.
    normal_share: float = 0.5
    real_share: float = 0.25  # share of real + extended anomalies per epoch (k > 0; 0: none)
    # Of the real-anomaly draws, the share that shows a real image as it is (mirrored half the time); the
    # rest are "extended": its defect, jointly augmented with its mask, pasted onto a normal foreground.
    real_copy_share: float = 0.5
    # How a real image shown as itself is varied: "flip" mirrors it half the time (the reference); "dihedral"
    # draws any of the eight flips and quarter turns (ours, against memorising ten images; see real_copy).
    real_copy_transform: str = "flip"
    # Whether a real image shown as itself also trains its unmarked pixels as normal (the reference: yes). False
    # (ours) counts only its marked pixels in the loss: a real defect's mask may leave out other defect-like marks.
    real_negatives: bool = True
    synthetic_kinds: tuple[str, ...] = ("perlin", "cutpaste", "scar")  # one drawn at random per synthetic anomaly
    beta_max: float = 0.8  # texture blending factor beta ~ U[0, beta_max)


def anomaly_mix(cfg: PRNConfig) -> AnomalyMix:
    """The training mix a PRN config asks for, checked (also what `defectmap synth` draws from)."""
    if not 0 <= cfg.normal_share <= 1 or not 0 <= cfg.real_share <= 1 - cfg.normal_share:
        raise ConfigError("model.normal_share and model.real_share must be shares of 1 that sum to at most 1")
    if not 0 <= cfg.real_copy_share <= 1:
        raise ConfigError("model.real_copy_share must be in [0, 1]")
    if cfg.real_copy_transform not in COPY_TRANSFORMS:
        raise ConfigError(f"model.real_copy_transform must be one of: {', '.join(COPY_TRANSFORMS)}")
    return AnomalyMix(
        cfg.normal_share, cfg.real_share, tuple(cfg.synthetic_kinds), cfg.beta_max, cfg.real_copy_share,
        cfg.real_copy_transform, cfg.real_negatives,
    )  # fmt: skip


def top_k_score(maps: torch.Tensor, top_k: int, reference_size: int) -> torch.Tensor:
    """Mean of the k highest values of each (H, W) map, k = top_k scaled by the area ratio to reference_size^2."""
    area = maps[0].numel()  # a traced value during export: integer arithmetic only
    k = min(max(1, (top_k * area + reference_size**2 // 2) // reference_size**2), area)  # rounded
    return maps.flatten(1).topk(k, dim=1).values.mean(1)


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if x.shape[-2:] == size:
        return x
    if x.shape[-2] > size[0]:  # finer -> coarser: average over each coarse cell (a fixed kernel, exportable)
        factor = int(x.shape[-2]) // int(size[0])
        x = F.avg_pool2d(x, factor)
        if x.shape[-2:] == size:
            return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PrototypeResidual(nn.Module):
    """Prototypes of one level (a buffer) and the squared residual to the nearest one, per image."""

    def __init__(self, count: int, channels: int):
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(count, channels, 1, 1))

    def fit(self, features: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> None:
        """k-means (k-means++ seeding, Lloyd iterations) over whole feature maps (N, C, h, w)."""
        flat = features.flatten(1)
        n = len(flat)
        k = max(1, min(k, n))
        centres = [flat[int(torch.randint(n, (), generator=generator))]]
        closest = ((flat - centres[0]) ** 2).sum(1)
        for _ in range(1, k):
            probabilities = closest / closest.sum() if closest.sum() > 0 else torch.full_like(closest, 1 / n)
            centres.append(flat[int(torch.multinomial(probabilities.cpu(), 1, generator=generator))])
            closest = torch.minimum(closest, ((flat - centres[-1]) ** 2).sum(1))
        centres = torch.stack(centres)
        for _ in range(iterations):
            assign = torch.cdist(flat, centres).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, assign, flat)
            counts = torch.bincount(assign, minlength=k).to(flat.dtype)
            updated = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
            if torch.equal(updated, centres):
                break
            centres = updated
        count = self.prototypes.shape[0]
        padded = centres[torch.arange(count) % k]  # repeats: the nearest prototype stays the same
        self.prototypes = padded.view(count, *features.shape[1:]).to(self.prototypes.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The prototypes' (h, w) follow the input size, known only from data: take the saved shape.
        saved = state_dict.get(prefix + "prototypes")
        if saved is not None:
            self.prototypes = torch.empty_like(saved, device=self.prototypes.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        prototypes = self.prototypes
        if prototypes.shape[-2:] == (1, 1):  # not fitted yet (a fresh model): constant per channel
            prototypes = prototypes.expand(-1, -1, *features.shape[-2:])
        flat = features.flatten(1)
        if prototypes.shape[1:] != features.shape[1:]:
            raise ConfigError(
                f"prototypes were fitted on {tuple(self.prototypes.shape[1:])} features, got "
                f"{tuple(features.shape[1:])}: use the checkpoint's data.image_size"
            )
        nearest = torch.cdist(flat, prototypes.flatten(1)).argmin(1)
        return (features - prototypes[nearest]) ** 2


class MultiSizeAttention(nn.Module):
    """Self-attention inside non-overlapping windows of several sizes, one channel group per size."""

    def __init__(self, channels: int, divisions: tuple[int, ...], max_window: int):
        super().__init__()
        self.divisions, self.max_window = divisions, max_window
        self.groups = [channels // len(divisions)] * len(divisions)
        self.groups[-1] += channels - sum(self.groups)
        self.norm = nn.GroupNorm(1, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.mlp = nn.Sequential(nn.GroupNorm(1, channels), nn.Conv2d(channels, 2 * channels, 1), nn.GELU(),
                                 nn.Conv2d(2 * channels, channels, 1))  # fmt: skip

    def _windowed(self, q, k, v, division: int) -> torch.Tensor:
        b, c, h, w = q.shape
        n = max(1, min(max(division, -(-max(h, w) // self.max_window)), h, w))  # windows per side
        wh, ww = -(-h // n), -(-w // n)
        pad = (0, ww * n - w, 0, wh * n - h)

        def tokens(x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W) -> (B * n * n, wh * ww, c)
            x = F.pad(x, pad)
            x = x.view(b, c, n, wh, n, ww).permute(0, 2, 4, 3, 5, 1)
            return x.reshape(b * n * n, wh * ww, c)

        out = F.scaled_dot_product_attention(tokens(q), tokens(k), tokens(v))
        out = out.view(b, n, n, wh, ww, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, n * wh, n * ww)
        return out[:, :, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        outs = [
            self._windowed(qg, kg, vg, d)
            for qg, kg, vg, d in zip(
                q.split(self.groups, 1), k.split(self.groups, 1), v.split(self.groups, 1), self.divisions, strict=True
            )
        ]
        x = x + self.proj(torch.cat(outs, 1))
        return x + self.mlp(x)


class PRN(AnomalyModel):
    Config = PRNConfig
    takes_real_anomalies = True
    positive = (
        "max_prototypes",
        "prototype_fraction",
        "kmeans_iterations",
        "width",
        "window_divisions",
        "max_window",
        "decoder_channels",
        "top_k",
        "top_k_size",
    )
    # Adam 1e-4 as the reference; 12 epochs of 8 keep a 256^2 Magnetic Tile run under 30 CPU minutes.
    # min_steps: 12 epochs of 85 steps, Magnetic Tile's 685 good training images at batch 8. On fewer images the run
    # trains as many steps rather than 12 epochs (README, "How many good images does a line need?").
    train_defaults = {"lr": 1e-4, "batch_size": 8, "epochs": 12, "min_steps": 1020}

    @staticmethod
    def input_rule(cfg: PRNConfig) -> tuple[int, int]:
        return 1, 32  # any size from 32 (EfficientNet-Lite0's deepest used stage fails below)

    def __init__(self, cfg: PRNConfig | None = None, post: PostprocessConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or PRNConfig()
        if post is not None and (post.hee or post.normalize or post.choose != "manual"):
            option = "hee" if post.hee else "normalize" if post.normalize else "choose"
            raise ConfigError(f"postprocess.{option} filters reconstruction errors; prn outputs probabilities: drop it")
        self.anomaly_mix = anomaly_mix(cfg)
        self.backbone = FrozenBackbone(cfg.backbone)
        channels = self.backbone.channels
        self.residuals = nn.ModuleList(PrototypeResidual(cfg.max_prototypes, c) for c in channels[:3])
        self.fuse_in = nn.ModuleList(conv_bn_relu(2 * c, cfg.width, 1) for c in channels[:3])
        # exchange[t][s]: level s resampled to level t's size, then a 1x1 conv (multi-scale fusion).
        self.exchange = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(cfg.width, cfg.width, 1) for _ in range(3)) for _ in range(3)
        )
        self.attention = nn.ModuleList(
            nn.Sequential(
                *(
                    MultiSizeAttention(cfg.width, cfg.window_divisions, cfg.max_window)
                    for _ in range(cfg.attention_layers)
                )
            )
            for _ in range(3)
        )
        d = cfg.decoder_channels
        self.deep = conv_bn_relu(channels[3], d[0], 1)
        self.up = nn.ModuleList(conv_bn_relu(a + cfg.width, b) for a, b in zip(d[:3], d[1:4], strict=True))
        self.head = nn.Sequential(conv_bn_relu(d[3], d[3]), nn.Conv2d(d[3], 1, 1))
        self.blur = GaussianBlur(cfg.smoothing_sigma)

    def load_weights(self) -> None:
        if self.cfg.pretrained:  # else the random-init backbone (tests, or by choice)
            self.backbone.load_pretrained(self.cfg.weights)

    def prepare(self, batches) -> None:
        """Fit prototypes on normal training features (of the backbone `load_weights` filled in)."""
        levels: list[list[torch.Tensor]] = [[], [], []]
        with torch.no_grad():
            for images in batches:
                for store, features in zip(levels, self.backbone(images)[:3], strict=False):
                    store.append(features.float())
        generator = torch.Generator().manual_seed(0)
        for residual, store in zip(self.residuals, levels, strict=True):
            features = torch.cat(store)
            k = min(self.cfg.max_prototypes, max(1, round(self.cfg.prototype_fraction * len(features))))
            residual.fit(features.cpu(), k, self.cfg.kmeans_iterations, generator)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.backbone(images)  # 4 x (B, C_l, S / stride, S / stride)
        fused = [
            fuse(torch.cat([f, residual(f)], 1))
            for fuse, f, residual in zip(self.fuse_in, features[:3], self.residuals, strict=True)
        ]
        exchanged = []
        for t in range(3):
            size = fused[t].shape[-2:]
            mixed = fused[t] + sum(self.exchange[t][s](_resize(fused[s], size)) for s in range(3) if s != t)
            exchanged.append(self.attention[t](F.relu(mixed)))
        x = self.deep(features[3])
        for up, skip in zip(self.up, reversed(exchanged), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], 1))
        x = F.interpolate(x, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(x)[:, 0]  # (B, S, S)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.logits(batch["image"]).float()
        masks = batch["mask"].float()  # (B, S, S) 0/1
        probabilities = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none")
        focal = (1 - torch.exp(-ce)) ** self.cfg.focal_gamma * ce  # Lin et al. with p_t = exp(-ce)
        smooth = F.smooth_l1_loss(probabilities, masks, reduction="none")
        if "weight" in batch:  # only the pixels that count (model.real_negatives=false)
            weights = batch["weight"].float()
            focal, smooth = ((t * weights).sum() / weights.sum().clamp_min(1) for t in (focal, smooth))
        else:
            focal, smooth = focal.mean(), smooth.mean()
        return {"loss": smooth + self.cfg.focal_weight * focal, "smooth_l1": smooth.detach(), "focal": focal.detach()}

    def forward(self, images: torch.Tensor) -> Output:
        maps = torch.sigmoid(self.logits(images).float())  # (B, S, S)
        maps = self.blur(maps)
        return Output(top_k_score(maps, self.cfg.top_k, self.cfg.top_k_size), maps)

"""Histogram Error Estimation (Xing and Li, IEEE TCSVT 2023, arXiv 2209.12441), and the error-map filter
every reconstruction model ends with (optional position normalisation, optional HEE, Gaussian smoothing).

HEE removes the reconstruction error that accumulates over normal background: per image, the
histogram of the difference image D has a dominant low-error mode (the background); its upper edge
tau is where the histogram falls below a fraction of the peak, and D' = max(D - tau, 0). It has no
parameters and no Python loop over pixels or images, and it is exportable (bucketize + scatter).
The paper's full text was not available: the edge rule and the bin count are [ours] (METHODS.md).
"""

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from defectmap.errors import ConfigError
from defectmap.models.smoothing import GaussianBlur

CHOICES = ("manual", "synthetic")  # postprocess.choose


@dataclass
class PostprocessConfig:
    hee: bool = False  # Histogram Error Estimation on the difference image, before smoothing
    hee_bins: int = 64  # histogram bins between each image's minimum and maximum error
    hee_edge: float = 0.1  # tau = lower edge of the first bin above the peak holding < hee_edge * peak count
    # Divide the difference image by the mean difference of the validation normals at each position (smoothed),
    # so places that are hard to rebuild on every good part (tile edges, borders) stop dominating the map.
    # [ours], not from the papers; off by default (README: it raises image AUROC, costs AU-PRO at part edges).
    normalize: bool = False
    # manual: normalize and hee as given | synthetic: after training, each on/off combination of the two is scored
    # on the validation normals with synthetic anomalies pasted in (no real anomaly, no test image); the best
    # image AUROC wins and the checkpoint records it in normalize and hee. [ours], off by default.
    choose: str = "manual"


def histogram_error_estimation(errors: torch.Tensor, bins: int = 64, edge: float = 0.1) -> torch.Tensor:
    """(B, H, W) non-negative difference images -> background-removed maps max(D - tau, 0), per image."""
    flat = errors.flatten(1)  # (B, N)
    low = flat.amin(1, keepdim=True)
    width = (flat.amax(1, keepdim=True) - low).clamp_min(1e-12) / bins
    index = ((flat - low) / width).floor().clamp(0, bins - 1).long()
    counts = torch.zeros(flat.shape[0], bins, dtype=flat.dtype, device=flat.device).scatter_add(
        1, index, torch.ones_like(flat)
    )  # (B, bins)
    peak_count, peak = counts.max(1, keepdim=True)
    positions = torch.arange(bins, device=flat.device)[None]
    # First bin above the dominant mode that holds fewer than `edge` of its count: the background's edge.
    falling = (positions > peak) & (counts < edge * peak_count)
    first = torch.where(falling, positions, torch.full_like(positions, bins)).amin(1, keepdim=True)
    tau = low + first.to(flat.dtype) * width
    return (errors - tau[:, :, None]).clamp_min(0.0)


class ErrorMapFilter(nn.Module):
    """Difference image -> anomaly map: optional position normalisation, optional HEE, then Gaussian smoothing
    (shared by AE, DAAD, PMB). Normalisation needs `fit` on normal validation images; until then it is off."""

    def __init__(self, post: PostprocessConfig, sigma: float):
        super().__init__()
        if post.choose not in CHOICES:
            raise ConfigError(f"postprocess.choose must be {' or '.join(CHOICES)}, got '{post.choose}'")
        self.post = post
        self.blur = GaussianBlur(sigma)
        # (H, W) expected difference of a normal image; empty until `fit`. Saved only when normalisation is on,
        # so checkpoints without it load unchanged.
        self.register_buffer("expected", torch.ones(0), persistent=post.normalize)

    @torch.no_grad()
    def fit(self, differences: Iterable[torch.Tensor]) -> None:
        """Expected difference per position from batches of (B, H, W) difference images of normal images."""
        if not self.post.normalize:
            return
        total, count = None, 0
        for batch in differences:
            total = batch.sum(0) if total is None else total + batch.sum(0)
            count += len(batch)
        if not count:
            raise ValueError("postprocess.normalize needs at least one normal validation image")
        mean = self.blur((total / count)[None])[0]
        # Floor at 1% of the average: a position normals rebuild perfectly must not turn noise into a defect.
        self.expected = mean.clamp_min(float(mean.mean()) * 0.01)

    def set_steps(self, normalize: bool, hee: bool) -> None:
        """Turn normalisation and HEE on or off after construction (`postprocess.choose`); turning normalisation
        on needs `fit` again. As at construction, the expected difference is saved only while normalisation is on."""
        self.post.normalize, self.post.hee = normalize, hee
        self.register_buffer("expected", self.expected, persistent=normalize)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "expected"
        if self.post.normalize and key in state_dict:  # its shape is the input size, known only from the checkpoint
            self.expected = torch.empty_like(state_dict[key], device=self.expected.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, errors: torch.Tensor) -> torch.Tensor:
        if self.post.normalize and self.expected.numel():
            expected = self.expected
            if expected.shape != errors.shape[-2:]:
                expected = F.interpolate(expected[None, None], size=errors.shape[-2:], mode="bilinear")[0, 0]
            errors = errors / expected
        if self.post.hee:
            errors = histogram_error_estimation(errors, self.post.hee_bins, self.post.hee_edge)
        return self.blur(errors)

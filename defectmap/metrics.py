"""Exact anomaly-detection metrics: image and pixel AUROC, AU-PRO, pixel AP and F1-max.

Every distinct score is a threshold (ties merged, no binning); counts accumulate in float64.
Inputs are numpy arrays (one 2-D mask and map per image, sizes may differ; maps are compared as
float32); the work runs in torch, on the GPU when there is one. AU-PRO follows Bergmann et al.
(IJCV 2021), as METHODS.md defines it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _flatten(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(masks) != len(maps):
        raise ValueError(f"got {len(masks)} masks but {len(maps)} maps")
    for i, (mask, amap) in enumerate(zip(masks, maps, strict=True)):
        if mask.shape != amap.shape or mask.ndim != 2:
            raise ValueError(f"image {i}: mask shape {mask.shape} and map shape {amap.shape} must be equal and 2-D")
    device = _device()
    scores = torch.cat([torch.as_tensor(np.asarray(m, dtype=np.float32)).reshape(-1) for m in maps]).to(device)
    labels = torch.cat([torch.as_tensor(np.ascontiguousarray(m) > 0).reshape(-1) for m in masks]).to(device)
    return scores, labels


def _sort_descending(scores: torch.Tensor, payload: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort scores from high to low, carrying a non-negative int payload (< 2**32) along.

    Score and payload are packed into one int64 key (order-preserving bits of -score in the high
    word), so a plain value sort replaces an argsort and a gather; on the CPU numpy's vectorised
    sort of int64 is about twice as fast as torch's. Returns (sortable score keys, payloads).
    """
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN")
    if scores.dtype == torch.float64:  # few image-level scores: keep full precision, argsort is cheap
        sorted_scores, order = torch.sort(scores, descending=True)
        return sorted_scores, payload[order]
    negated = (-scores.to(torch.float32)) + 0.0  # + 0.0 turns -0.0 into 0.0 so the two tie
    bits = negated.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)  # signed order == float order
    keys = (ordered << 32) | payload.to(torch.int64)
    keys = torch.sort(keys).values if keys.is_cuda else torch.from_numpy(np.sort(keys.numpy()))
    return keys >> 32, keys & 0xFFFFFFFF


def _tie_group_ends(sorted_keys: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the last position of each run of equal scores in a sorted vector."""
    ends = torch.ones_like(sorted_keys, dtype=torch.bool)
    ends[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    return ends


def _cumulative_counts(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """True and false positives at every distinct threshold, highest threshold first."""
    sorted_keys, positives = _sort_descending(scores, labels)
    true_pos = torch.cumsum(positives, 0, dtype=torch.float64)
    ranks = torch.arange(1, len(scores) + 1, device=scores.device, dtype=torch.float64)
    ends = _tie_group_ends(sorted_keys)
    return true_pos[ends], (ranks - true_pos)[ends]


def _auroc(tps: torch.Tensor, fps: torch.Tensor) -> float:
    if tps[-1] == 0 or fps[-1] == 0:
        return math.nan
    zero = torch.zeros(1, dtype=torch.float64, device=tps.device)
    return float(torch.trapezoid(torch.cat([zero, tps / tps[-1]]), torch.cat([zero, fps / fps[-1]])))


def _average_precision(tps: torch.Tensor, fps: torch.Tensor) -> float:
    """scikit-learn's step-wise definition: sum over thresholds of recall increase times precision."""
    if tps[-1] == 0:
        return math.nan
    precision, recall = tps / (tps + fps), tps / tps[-1]
    steps = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64, device=recall.device))
    return float((steps * precision).sum())


def _f1_max(tps: torch.Tensor, fps: torch.Tensor) -> float:
    if tps[-1] == 0:
        return math.nan
    precision, recall = tps / (tps + fps), tps / tps[-1]
    return float((2 * precision * recall / (precision + recall).clamp_min(1e-300)).max())


def image_auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC of image scores against labels (1 = defective); NaN when one class is absent."""
    scores_t = torch.as_tensor(np.asarray(scores, dtype=np.float64), device=_device())
    labels_t = torch.as_tensor(np.asarray(labels) > 0, device=_device())
    return _auroc(*_cumulative_counts(scores_t, labels_t))


def _weighted_aurocs(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC for each row of `weights` (B, N): how many times each image counts in that resample."""
    negative, positive = scores[~labels], scores[labels]
    order = np.argsort(negative, kind="stable")
    sorted_negative = negative[order]
    below = np.searchsorted(sorted_negative, positive, "left")  # negatives strictly below each positive
    at_or_below = np.searchsorted(sorted_negative, positive, "right")
    neg_weights, pos_weights = weights[:, ~labels][:, order], weights[:, labels]
    cumulative = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(neg_weights, axis=1)], axis=1)
    wins = cumulative[:, below] + 0.5 * (cumulative[:, at_or_below] - cumulative[:, below])  # ties count half
    return (pos_weights * wins).sum(1) / (pos_weights.sum(1) * neg_weights.sum(1))


def image_auroc_interval(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    other: Sequence[float] | np.ndarray | None = None,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of image AUROC over the test images; None when one class is absent.

    The good and the defective images are resampled separately (their counts stay fixed), so the interval says
    how far the figure could move on another test set of this size and mix. With `other` (a second model's scores
    on the same images, in the same order), the interval is of AUROC(scores) - AUROC(other), both on the same
    resampled images: a paired comparison. Deterministic for a given `seed`.
    """
    labels_np = np.asarray(labels) > 0
    if labels_np.all() or not labels_np.any():
        return None
    scores_np = np.asarray(scores, dtype=np.float64)
    other_np = None if other is None else np.asarray(other, dtype=np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // len(labels_np))  # resamples at a time: memory stays bounded for large test sets
    values = []
    for start in range(0, resamples, chunk):
        weights = np.zeros((min(chunk, resamples - start), len(labels_np)))
        for group in (np.flatnonzero(labels_np), np.flatnonzero(~labels_np)):
            weights[:, group] = rng.multinomial(len(group), np.full(len(group), 1 / len(group)), size=len(weights))
        values.append(_weighted_aurocs(labels_np, scores_np, weights))
        if other_np is not None:
            values[-1] -= _weighted_aurocs(labels_np, other_np, weights)
    values = np.concatenate(values)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def per_defect_type(
    labels: Sequence[int], scores: Sequence[float], defects: Sequence[str], threshold: float
) -> dict[str, dict]:
    """For each defect type: its image count, its image AUROC against all good images (None without good
    images) and how many of its images score at or below `threshold` (missed)."""
    labels_np, scores_np, defects_np = np.asarray(labels), np.asarray(scores, dtype=np.float64), np.asarray(defects)
    good = labels_np == 0
    breakdown = {}
    for defect in sorted(set(defects_np[labels_np == 1].tolist())):
        chosen = defects_np == defect
        auroc = image_auroc(labels_np[good | chosen], scores_np[good | chosen])
        breakdown[defect] = {
            "images": int(chosen.sum()),
            "image_auroc": None if math.isnan(auroc) else auroc,
            "missed": int((scores_np[chosen] <= threshold).sum()),
        }
    return breakdown


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """ROC AUC over all pixels of all images."""
    return _auroc(*_cumulative_counts(*_flatten(masks, maps)))


def pixel_ap(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """Average precision over all pixels."""
    return _average_precision(*_cumulative_counts(*_flatten(masks, maps)))


def f1_max(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """Best pixel F1 over all thresholds: an oracle threshold chosen on the evaluated data itself."""
    return _f1_max(*_cumulative_counts(*_flatten(masks, maps)))


def roc_curve(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Image-level (FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1)."""
    scores_t = torch.as_tensor(np.asarray(scores, dtype=np.float64), device=_device())
    tps, fps = _cumulative_counts(scores_t, torch.as_tensor(np.asarray(labels) > 0, device=_device()))
    fpr = np.concatenate([[0.0], (fps / max(float(fps[-1]), 1.0)).cpu().numpy()])
    tpr = np.concatenate([[0.0], (tps / max(float(tps[-1]), 1.0)).cpu().numpy()])
    return fpr, tpr


def pr_curve(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-level (recall, precision) at every distinct threshold, highest threshold first."""
    tps, fps = _cumulative_counts(*_flatten(masks, maps))
    return (tps / tps[-1].clamp_min(1)).cpu().numpy(), (tps / (tps + fps)).cpu().numpy()


def _region_ids(masks: Sequence[np.ndarray]) -> tuple[torch.Tensor, int]:
    """Global id of the 8-connected defect region of each pixel (0 for defect-free pixels)."""
    ids, offset = [], 0
    for mask in masks:
        labelled, count = ndimage.label(np.asarray(mask) > 0, structure=_EIGHT_CONNECTED)
        labelled = labelled.astype(np.int32)
        labelled[labelled > 0] += offset
        ids.append(torch.from_numpy(labelled.reshape(-1)))
        offset += count
    return torch.cat(ids).to(_device()), offset


def _fpr_cutoff(scores: torch.Tensor, ok: torch.Tensor, fpr_limit: float) -> torch.Tensor:
    """A score whose FPR exceeds `fpr_limit`: thresholds below it cannot change AU-PRO@limit.

    Pixels scoring at least the cutoff are all that the curve up to the limit needs. A quantile of a
    strided sample with a small margin usually qualifies (checked by one count); the exact (k+1)-th
    highest defect-free score is the fallback.
    """
    n_ok = int(ok.sum())
    k = min(n_ok - 1, int(fpr_limit * n_ok) + 1)  # the (k+1)-th highest OK score has FPR > limit
    step = max(1, len(scores) // 1_000_000)
    sample = scores[::step][ok[::step]]
    if len(sample) > 1000:
        rank = min(len(sample), int((1 - fpr_limit - 0.02) * len(sample)))
        cutoff = torch.kthvalue(sample, max(rank, 1)).values
        if int(((scores >= cutoff) & ok).sum()) >= k + 1:
            return cutoff
    return torch.kthvalue(scores[ok], n_ok - k).values


def pro_curve(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct threshold, from (0, 0) up to the first point at or beyond `fpr_limit`."""
    scores, _ = _flatten(masks, maps)
    regions, n_regions = _region_ids(masks)
    sizes = torch.bincount(regions, minlength=n_regions + 1).to(torch.float64)
    n_ok = float(sizes[0])
    if n_regions == 0 or n_ok == 0:
        return np.zeros(1), np.zeros(1)
    if fpr_limit < 1.0:
        keep = scores >= _fpr_cutoff(scores, regions == 0, fpr_limit)
        scores, regions = scores[keep], regions[keep]
    sorted_keys, regions = _sort_descending(scores, regions)
    # FPR pools every defect-free pixel; PRO averages per-region overlaps, so each defect pixel adds
    # 1 / (|its region| * number of regions).
    pro_steps = torch.where(regions > 0, 1.0 / (sizes[regions] * n_regions), torch.zeros((), dtype=torch.float64))
    ends = _tie_group_ends(sorted_keys)
    fpr = (torch.cumsum(regions == 0, 0, dtype=torch.float64)[ends] / n_ok).cpu().numpy()
    pro = torch.cumsum(pro_steps, 0)[ends].cpu().numpy()
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro])


def area_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under a monotone curve from x=0 to `limit`, interpolating linearly at the limit."""
    inside = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:inside], y[:inside]
    if inside < len(x) and xs[-1] < limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs, ys = np.append(xs, limit), np.append(ys, y_limit)
    return float(np.trapezoid(ys, xs))


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to `fpr_limit`, divided by `fpr_limit` (1.0 is perfect)."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps, fpr_limit)
    if len(fpr) == 1:
        return math.nan
    return area_to_limit(fpr, pro, fpr_limit) / fpr_limit


def pixel_metrics(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> dict[str, float]:
    """Pixel AUROC, AU-PRO@0.3, pixel AP and F1-max, sharing one sort for the first, third and fourth."""
    counts = _cumulative_counts(*_flatten(masks, maps))
    return {
        "pixel_auroc": _auroc(*counts),
        "aupro": aupro(masks, maps),
        "pixel_ap": _average_precision(*counts),
        "f1_max": _f1_max(*counts),
    }

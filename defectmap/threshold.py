"""Decision thresholds from held-out normal images, and score normalisation (threshold -> 0.5)."""

from __future__ import annotations

import numpy as np


def threshold_at_false_reject(good_scores: np.ndarray, false_reject_rate: float) -> float:
    """Smallest order statistic t such that at most `false_reject_rate` of good scores are > t."""
    scores = np.sort(np.asarray(good_scores, dtype=np.float64))
    if len(scores) == 0:
        raise ValueError("no validation scores to set a threshold from")
    allowed = int(np.floor(false_reject_rate * len(scores)))
    return float(scores[len(scores) - 1 - min(allowed, len(scores) - 1)])


def calibrate(val_scores: list[float], val_maps: list[np.ndarray], false_reject_rate: float) -> dict[str, float]:
    """Statistics of normal validation images: image-score and pixel-map thresholds and medians."""
    val_scores = np.asarray(val_scores, dtype=np.float64)
    maxima = np.array([m.max() for m in val_maps])
    return {
        "false_reject_rate": float(false_reject_rate),
        "threshold": threshold_at_false_reject(val_scores, false_reject_rate),
        "score_median": float(np.median(val_scores)),
        "map_threshold": threshold_at_false_reject(maxima, false_reject_rate),
        "map_median": float(np.median(np.concatenate([m.ravel() for m in val_maps]))),
        "val_images": int(len(val_scores)),
    }


def threshold_max_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (decision: score > t) with the best image F1 on a validation set with defects."""
    labels, scores = np.asarray(labels) > 0, np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        raise ValueError("max-F1 thresholds need both good and defective validation images")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], labels[order]
    true_pos = np.cumsum(hits)
    predicted = np.arange(1, len(scores) + 1)
    ends = np.append(sorted_scores[1:] != sorted_scores[:-1], True)  # flag everything down to each distinct score
    f1 = 2 * true_pos / (predicted + labels.sum())
    best = int(np.flatnonzero(ends)[np.argmax(f1[ends])])
    # Flagging down to sorted_scores[best] means t sits just below it: halfway to the next lower score.
    below = sorted_scores[best + 1] if best + 1 < len(scores) else sorted_scores[best] - 1.0
    return float((sorted_scores[best] + below) / 2)


def normalise(values: np.ndarray | float, median: float, threshold: float) -> np.ndarray:
    """Affine map sending the normal median to 0 and the threshold to 0.5 (unclipped)."""
    return 0.5 * (np.asarray(values, dtype=np.float64) - median) / max(threshold - median, 1e-12)

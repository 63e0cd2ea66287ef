"""Decision thresholds from held-out normal images, and score normalisation (threshold -> 0.5)."""

from __future__ import annotations

import math

import numpy as np

from defectmap.text import plural

CONFIDENCE = 0.95  # of the upper bound on the false-reject rate a threshold promises
OUTLOOK_KEYS = ("expected_false_reject_rate", "false_reject_rate_95")


def threshold_at_false_reject(good_scores: np.ndarray, false_reject_rate: float) -> float:
    """Smallest order statistic t such that at most `false_reject_rate` of good scores are > t."""
    scores = np.sort(np.asarray(good_scores, dtype=np.float64))
    if len(scores) == 0:
        raise ValueError("no validation scores to set a threshold from")
    allowed = int(np.floor(false_reject_rate * len(scores)))
    return float(scores[len(scores) - 1 - min(allowed, len(scores) - 1)])


def false_reject_outlook(good_scores: np.ndarray, threshold: float) -> dict[str, float]:
    """What a threshold set on n good images promises for new good images of the same kind.

    If m of the n good scores are above t, t is at or above their (m+1)-th largest, and for exchangeable scores
    without ties the share of new good images above that order statistic is Beta(m + 1, n - m) distributed: expected
    (m + 1) / (n + 1), whatever the score distribution. So the rule "at most r of the validation images above it"
    rejects at least r of new good parts on average, and mostly more; a threshold at the maximum of 30 images is
    expected to reject 1/31 = 3.2% of them, and up to 9.5% with 95% confidence. The figures are upper bounds where t
    lies between two scores (a max-F1 threshold).
    """
    scores = np.asarray(good_scores, dtype=np.float64)
    return _outlook(len(scores), int((scores > threshold).sum()))


def _outlook(n: int, above: int) -> dict[str, float]:
    from scipy.stats import beta  # here, not at the top: scipy.stats adds 0.4 s to every command's start-up

    upper = 1.0 if above == n else float(beta.ppf(CONFIDENCE, above + 1, n - above))
    return {"expected_false_reject_rate": (above + 1) / (n + 1), "false_reject_rate_95": upper}


def calibration_outlook(calibration: dict) -> dict[str, float] | None:
    """A calibration's `false_reject_outlook`: as recorded, or, for checkpoints from before it was, derived from the
    false-reject rule (at most floor(r n) of the n good images above); None for a max-F1 threshold without it."""
    if "expected_false_reject_rate" in calibration:
        return {key: calibration[key] for key in OUTLOOK_KEYS}
    rule = calibration.get("threshold_rule", "false-reject rate")
    if not rule.startswith("false-reject rate") or "val_images" not in calibration:
        return None
    return _rule_outlook(calibration["val_images"], calibration["false_reject_rate"])


def promised_rates(outlook: dict[str, float]) -> str:
    """`about 1.3% of good parts rejected, at most 3.9% at 95% confidence`: an outlook in words."""
    return (f"about {outlook['expected_false_reject_rate']:.1%} of good parts rejected, at most "
            f"{outlook['false_reject_rate_95']:.1%} at {CONFIDENCE:.0%} confidence")  # fmt: skip


def _rule_outlook(n: int, false_reject_rate: float) -> dict[str, float]:
    """The outlook of the false-reject rule's threshold on n good images: floor(r n) of them above it."""
    return _outlook(n, min(int(np.floor(false_reject_rate * n)), n - 1))


def rejections_expected(expected_rate: float, calibration_images: int, good_images: int) -> tuple[float, int]:
    """How many of `good_images` new good images a threshold should reject, on average and at most with 95%
    confidence: the Beta rate of `false_reject_outlook`, then the binomial draw of that many images (beta-binomial),
    so both the calibration's few images and the test's own sampling are in the bound."""
    from scipy.stats import betabinom  # see _outlook

    n = calibration_images
    a = round(expected_rate * (n + 1))  # m + 1, the threshold's rank from the top among the n good scores
    if a > n:  # below every good score: every new good image is expected above it
        return float(good_images), good_images
    return good_images * expected_rate, int(betabinom.ppf(CONFIDENCE, good_images, a, n + 1 - a))


def images_for_rate(false_reject_rate: float) -> int:
    """The fewest good images whose threshold at `false_reject_rate` is expected to reject at most twice that.

    Below 1/r images the threshold is their maximum, expected to reject 1/(n+1) of new good parts: at most 2r from
    n = 1/(2r) - 1 on. Above, floor(r n) + 1 of n + 1 stays under 2r."""
    return math.ceil(1 / (2 * false_reject_rate) - 1)


def unreliable_rate_warning(good_images: int, false_reject_rate: float) -> str | None:
    """One line when `good_images` are too few for a threshold at `false_reject_rate` to hold that rate to within
    twice (known before any scoring: the rule puts floor(r n) of them above it, ties aside)."""
    n, asked = good_images, false_reject_rate
    if not asked or not n:
        return None
    outlook = _rule_outlook(n, asked)
    expected, upper = outlook["expected_false_reject_rate"], outlook["false_reject_rate_95"]
    if expected <= 2 * asked:
        return None
    return (
        f"{plural(n, 'good image')} cannot hold the false-reject rate to {asked:.2%}: expect about {expected:.1%} of "
        f"good parts rejected (up to {upper:.1%} at {CONFIDENCE:.0%} confidence); {images_for_rate(asked)} or more "
        "hold it to within twice that (raise data.val_fraction, or calibrate on more good images with `defectmap "
        "threshold CKPT --good DIR`)"
    )


def calibrate(val_scores: list[float], val_maps: list[np.ndarray], false_reject_rate: float) -> dict[str, float]:
    """Statistics of normal validation images: image-score and pixel-map thresholds and medians, and what the image
    threshold promises for new good images (`false_reject_outlook`)."""
    val_scores = np.asarray(val_scores, dtype=np.float64)
    maxima = np.array([m.max() for m in val_maps])
    threshold = threshold_at_false_reject(val_scores, false_reject_rate)
    return {
        "false_reject_rate": float(false_reject_rate),
        "threshold": threshold,
        **false_reject_outlook(val_scores, threshold),
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

"""Metrics against independent references: scikit-learn, and a literal AU-PRO written from its definition."""

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from defectmap import metrics


def literal_aupro(masks, maps, limit=0.3):
    """Slow reference: binarise at every distinct score, measure FPR and mean region overlap, integrate."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask > 0, structure=np.ones((3, 3)))
        regions += [(i, labelled == r) for r in range(1, count + 1)]
    ok_total = sum(int((m == 0).sum()) for m in masks)
    points = [(0.0, 0.0)]
    for t in sorted(set(np.concatenate([a.ravel() for a in maps]).tolist()), reverse=True):
        fp = sum(int(((a >= t) & (m == 0)).sum()) for a, m in zip(maps, masks, strict=True))
        overlaps = [float((maps[i][region] >= t).mean()) for i, region in regions]
        points.append((fp / ok_total, float(np.mean(overlaps))))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def random_case(rng, n_images=6, sizes=((12, 17), (9, 9), (15, 11)), levels=7):
    """Maps with heavy ties (few distinct levels), masks with blobs, single pixels, and empty masks."""
    masks, maps = [], []
    for i in range(n_images):
        h, w = sizes[i % len(sizes)]
        mask = np.zeros((h, w), dtype=np.uint8)
        if i % 3 != 0:  # every third image is good (empty mask)
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            mask[y : y + 3, x : x + rng.integers(1, 4)] = 1
            mask[rng.integers(0, h), rng.integers(0, w)] = 1  # often a single-pixel region
        amap = rng.integers(0, levels, size=(h, w)).astype(np.float32) + 2.0 * mask
        masks.append(mask)
        maps.append(amap)
    return masks, maps


@pytest.mark.parametrize("seed", range(5))
def test_pixel_metrics_match_sklearn(seed):
    masks, maps = random_case(np.random.default_rng(seed))
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.pixel_ap(masks, maps) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-300))
    assert metrics.f1_max(masks, maps) == pytest.approx(f1, abs=1e-12)
    combined = metrics.pixel_metrics(masks, maps)
    assert combined["pixel_auroc"] == metrics.pixel_auroc(masks, maps)


@pytest.mark.parametrize("seed", range(8))
def test_aupro_matches_literal_definition(seed):
    masks, maps = random_case(np.random.default_rng(seed), levels=5 + seed)
    expected = literal_aupro(masks, maps)
    assert metrics.aupro(masks, maps) == pytest.approx(expected, abs=1e-9)
    assert 0.0 <= expected <= 1.0


def test_aupro_interpolates_between_points_across_the_limit():
    # One OK pixel out of 4 per threshold step: FPR jumps 0 -> 0.25 -> 0.5, so 0.3 lies between two points.
    mask = np.array([[1, 0, 0, 0, 0]], dtype=np.uint8)
    amap = np.array([[0.5, 0.9, 0.6, 0.2, 0.1]], dtype=np.float32)
    # Curve: (0,0) -> t=.9 (0.25, 0) -> t=.6 (0.5, 0) -> t=.5 (0.5, 1) ...: area to 0.3 is zero.
    assert metrics.aupro([mask], [amap]) == pytest.approx(0.0)
    amap = np.array([[0.95, 0.9, 0.6, 0.2, 0.1]], dtype=np.float32)
    # (0,0) -> (0,1) -> (0.25,1) -> (0.5,1): area 0.3 -> normalised 1.
    assert metrics.aupro([mask], [amap]) == pytest.approx(1.0)
    assert literal_aupro([mask], [amap]) == pytest.approx(1.0)


def test_aupro_limit_interpolation_value():
    # PRO rises linearly with FPR between the points (0.25, 0.5) and (0.5, 1.0).
    mask = np.array([[1, 1, 0, 0, 0, 0]], dtype=np.uint8)
    amap = np.array([[0.9, 0.7, 0.8, 0.7, 0.1, 0.0]], dtype=np.float32)
    expected = literal_aupro([mask], [amap])
    assert metrics.aupro([mask], [amap]) == pytest.approx(expected, abs=1e-12)
    # (0,0) -> t=.9 (0, .5) -> t=.8 (.25, .5) -> t=.7 (.5, 1): at 0.3 PRO is .6
    area = 0.25 * 0.5 + 0.05 * (0.5 + 0.6) / 2
    assert expected == pytest.approx(area / 0.3)


def test_good_only_images_give_nan_and_image_auroc_matches_sklearn():
    masks = [np.zeros((4, 4), dtype=np.uint8)] * 3
    maps = [np.random.default_rng(i).random((4, 4)).astype(np.float32) for i in range(3)]
    assert math.isnan(metrics.aupro(masks, maps))
    assert math.isnan(metrics.pixel_auroc(masks, maps))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 10, 200).astype(float)  # ties
    assert metrics.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert math.isnan(metrics.image_auroc([0, 0], [0.1, 0.2]))


def test_per_defect_type_scores_each_type_against_the_good_images():
    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.9, 0.8, 0.15, 0.25]
    defects = ["good", "good", "good", "crack", "crack", "hole", "hole"]
    breakdown = metrics.per_defect_type(labels, scores, defects, threshold=0.85)
    assert list(breakdown) == ["crack", "hole"]
    assert breakdown["crack"] == {"images": 2, "image_auroc": 1.0, "missed": 1}
    hole = [0, 0, 0, 1, 1]
    expected = roc_auc_score(hole, [0.1, 0.2, 0.3, 0.15, 0.25])
    assert breakdown["hole"] == {"images": 2, "image_auroc": pytest.approx(expected), "missed": 2}
    assert expected == pytest.approx(0.5)
    no_good = metrics.per_defect_type([1, 1], [0.4, 0.6], ["crack", "crack"], threshold=0.5)
    assert no_good == {"crack": {"images": 2, "image_auroc": None, "missed": 1}}


def test_perfect_and_inverted_maps():
    masks, maps = random_case(np.random.default_rng(1))
    perfect = [m.astype(np.float32) for m in masks]
    assert metrics.aupro(masks, perfect) == pytest.approx(1.0)
    assert metrics.pixel_auroc(masks, perfect) == pytest.approx(1.0)
    inverted = [1.0 - p for p in perfect]
    assert metrics.aupro(masks, inverted) == pytest.approx(0.0)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="image 0"):
        metrics.pixel_auroc([np.zeros((3, 3))], [np.zeros((3, 4))])


@pytest.mark.parametrize("limit", [0.05, 0.3, 0.7])
def test_aupro_cutoff_shortcut_equals_full_curve(limit):
    # Large enough (> 1000 sampled OK pixels) to take the sampled-cutoff path; compared with the uncut curve.
    masks, maps = random_case(np.random.default_rng(3), n_images=30, sizes=((64, 48), (40, 40)), levels=50)
    fpr, pro = metrics.pro_curve(masks, maps, fpr_limit=1.0)
    assert fpr[-1] == pytest.approx(1.0)
    expected = metrics.area_to_limit(fpr, pro, limit) / limit
    assert metrics.aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)


def test_curves_match_sklearn():
    from sklearn.metrics import precision_recall_curve
    from sklearn.metrics import roc_curve as sk_roc

    rng = np.random.default_rng(7)
    labels, scores = rng.integers(0, 2, 300), rng.integers(0, 20, 300).astype(float)
    fpr, tpr = metrics.roc_curve(labels, scores)
    sk_fpr, sk_tpr, _ = sk_roc(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    masks, maps = random_case(rng)
    recall, precision = metrics.pr_curve(masks, maps)
    flat = np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps])
    sk_precision, sk_recall, _ = precision_recall_curve(*flat)
    np.testing.assert_allclose(recall, sk_recall[::-1][1:])
    np.testing.assert_allclose(precision, sk_precision[::-1][1:])


def test_bootstrap_weights_count_images_as_repeated_copies():
    # One resample as weights equals image AUROC on the resampled list itself, ties included.
    rng = np.random.default_rng(3)
    labels, scores = rng.integers(0, 2, 40) > 0, rng.integers(0, 6, 40).astype(float)
    drawn = rng.integers(0, 40, 40)
    weights = np.bincount(drawn, minlength=40)[None].astype(float)
    expected = metrics.image_auroc(labels[drawn], scores[drawn])
    assert metrics._weighted_aurocs(labels, scores, weights)[0] == pytest.approx(expected, abs=1e-12)
    assert metrics._weighted_aurocs(labels, scores, np.ones((1, 40)))[0] == pytest.approx(
        metrics.image_auroc(labels, scores), abs=1e-12
    )


def test_image_auroc_interval_brackets_the_figure_narrows_with_more_images_and_pairs_models():
    rng = np.random.default_rng(0)

    def data(n):
        labels = np.r_[np.zeros(n), np.ones(n)]
        return labels, rng.normal(size=2 * n) + labels

    labels, scores = data(100)
    low, high = metrics.image_auroc_interval(labels, scores)
    assert low < metrics.image_auroc(labels, scores) < high
    assert metrics.image_auroc_interval(labels, scores) == (low, high)  # deterministic for a seed
    big_labels, big_scores = data(1600)
    big_low, big_high = metrics.image_auroc_interval(big_labels, big_scores)
    assert big_high - big_low < (high - low) / 2  # about 1/sqrt(16) as wide
    assert metrics.image_auroc_interval(labels, scores, scores) == (0.0, 0.0)  # a model against itself
    better = scores + 2 * labels  # the same images, every defect scored higher
    assert metrics.image_auroc_interval(labels, better, scores)[0] > 0
    assert metrics.image_auroc_interval(np.zeros(5), np.arange(5.0)) is None  # no defective image

"""Predicted defects as pixels and as regions: where a map is above the calibrated pixel threshold, and each
8-connected part of that with its box, area and peak, for an inspector who must know where a defect is and how big;
and how those regions meet the ground-truth ones on a test split.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from defectmap.threshold import normalise

REGION_FIELDS = ("x", "y", "width", "height", "area", "peak", "normalised_peak")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # as the ground-truth regions of AU-PRO


def defect_pixels(anomaly_map: np.ndarray, calibration: dict) -> np.ndarray:
    """The predicted defect mask: the map above the calibrated pixel threshold."""
    return anomaly_map > calibration["map_threshold"]


def defect_regions(anomaly_map: np.ndarray, calibration: dict, min_area: int = 1) -> list[dict]:
    """The 8-connected regions of `defect_pixels` with at least `min_area` pixels, highest peak first.

    Each is {x, y, width, height} (its bounding box in the map's pixels, x to the right, y down), `area` (pixels),
    `peak` (the map's maximum in it) and `normalised_peak` (the same on the scale of `normalised_score`: the
    normal median 0, the pixel threshold 0.5, so every region's is above 0.5).
    """
    _, regions = labelled_regions(anomaly_map, calibration)
    return sorted((r for r in regions if r["area"] >= min_area), key=lambda region: -region["peak"])


def labelled_regions(anomaly_map: np.ndarray, calibration: dict) -> tuple[np.ndarray, list[dict]]:
    """Every region of `defect_pixels` as `defect_regions` describes it, in label order, and the label image:
    0 outside the regions, n inside the n-th (to test a region's pixels against a ground-truth mask)."""
    defect = defect_pixels(anomaly_map, calibration)
    labels, count = ndimage.label(defect, structure=_EIGHT_CONNECTED)
    if count == 0:
        return labels, []
    inside = labels[defect] - 1  # each defect pixel's region, from 0
    areas = np.bincount(inside, minlength=count)
    peaks = np.full(count, -np.inf)
    np.maximum.at(peaks, inside, anomaly_map[defect])  # 0.5 ms on a 1024² map; ndimage.maximum 98
    scaled = normalise(peaks, calibration["map_median"], calibration["map_threshold"])
    regions = [
        {
            "x": box[1].start,
            "y": box[0].start,
            "width": box[1].stop - box[1].start,
            "height": box[0].stop - box[0].start,
            "area": int(area),
            "peak": float(peak),
            "normalised_peak": float(level),
        }
        for box, area, peak, level in zip(ndimage.find_objects(labels), areas, peaks, scaled, strict=True)
    ]
    return labels, regions


def region_hits(anomaly_map: np.ndarray, mask: np.ndarray, calibration: dict, min_areas: list[int]) -> list[dict]:
    """One image's counts per minimum area: its ground-truth regions (8-connected parts of `mask`) and how many a
    predicted region touches (one pixel is enough), its predicted regions, how many touch a defect, and whether the
    highest-peak one does."""
    labels, regions = labelled_regions(anomaly_map, calibration)
    truth, truths = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    on_defect = np.zeros(len(regions) + 1, dtype=bool)
    on_defect[np.unique(labels[mask])] = True  # by label; 0, the background, is never kept below
    areas = np.array([0] + [r["area"] for r in regions])
    peaks = np.array([-np.inf] + [r["peak"] for r in regions])
    pairs = np.unique(np.stack([truth[mask], labels[mask]]), axis=1)  # (truth label, predicted label) that touch
    rows = []
    for min_area in min_areas:
        kept = areas >= min_area  # never the background: its area is 0
        touching = pairs[:, kept[pairs[1]]]
        top = int(np.argmax(np.where(kept, peaks, -np.inf))) if kept.any() else 0
        rows.append({
            "truth_regions": truths,
            "truth_found": len(np.unique(touching[0])),
            "regions": int(kept.sum()),
            "regions_on_defect": int((kept & on_defect).sum()),
            "top_on_defect": bool(top and on_defect[top]),
        })  # fmt: skip
    return rows


def region_figures(per_image: list[list[dict]], labels: list[int], min_areas: list[int]) -> list[dict]:
    """`region_hits` of a test split as shares, per minimum area. Defective images without a marked region (an
    image-level defect) are left out, having no region to find; a share with nothing to count is None."""

    def share(part: float, whole: float) -> float | None:
        return part / whole if whole else None

    table = []
    for i, min_area in enumerate(min_areas):
        rows = [image[i] for image in per_image]
        defective = [r for r, label in zip(rows, labels, strict=True) if label == 1 and r["truth_regions"]]
        good = [r for r, label in zip(rows, labels, strict=True) if label == 0]
        outlined = [r for r in defective if r["regions"]]
        on_defective = sum(r["regions"] for r in defective)
        truths = sum(r["truth_regions"] for r in defective)
        table.append({
            "min_area": min_area,
            "defective_images": len(defective),
            "truth_regions": truths,
            "defects_found": share(sum(r["truth_found"] for r in defective), truths),
            "defective_images_outlined": share(len(outlined), len(defective)),
            "top_region_on_defect": share(sum(r["top_on_defect"] for r in defective), len(defective)),
            "top_region_on_defect_when_outlined": share(sum(r["top_on_defect"] for r in outlined), len(outlined)),
            "regions_on_defect": share(sum(r["regions_on_defect"] for r in defective), on_defective),
            "regions_per_defective_image": share(on_defective, len(defective)),
            "good_images": len(good),
            "good_images_clear": share(sum(r["regions"] == 0 for r in good), len(good)),
            "regions_per_good_image": share(sum(r["regions"] for r in good), len(good)),
        })  # fmt: skip
    return table

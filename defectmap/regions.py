"""Predicted defects as pixels and as regions: where a map is above the calibrated pixel threshold, and each
8-connected part of that with its box, area and peak, for an inspector who must know where a defect is and how big.
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

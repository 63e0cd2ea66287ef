"""Predicted defect regions: 8-connected parts of the map above the pixel threshold, with boxes, areas and peaks."""

import numpy as np
import pytest

from defectmap.regions import defect_pixels, defect_regions, labelled_regions, region_figures, region_hits

CAL = {"map_median": 0.2, "map_threshold": 1.0}


def test_boxes_areas_and_peaks_of_known_regions():
    amap = np.zeros((10, 12))
    amap[1, 1], amap[2, 2] = 2.0, 3.0  # touching at a corner: one region
    amap[6:8, 8:11] = 1.5  # a 2 x 3 block
    amap[9, 0] = 1.0  # at the threshold itself: not above it
    regions = defect_regions(amap, CAL)
    assert regions == [
        {"x": 1, "y": 1, "width": 2, "height": 2, "area": 2, "peak": 3.0, "normalised_peak": pytest.approx(1.75)},
        {"x": 8, "y": 6, "width": 3, "height": 2, "area": 6, "peak": 1.5, "normalised_peak": pytest.approx(0.8125)},
    ]
    assert (
        [r["area"] for r in defect_regions(amap, CAL, min_area=3)]
        == [6]
        == [r["area"] for r in defect_regions(amap, CAL, min_area=6)]
    )
    assert defect_regions(amap, CAL, min_area=7) == []
    assert defect_regions(np.zeros((5, 5)), CAL) == []


def test_regions_cover_the_defect_mask_exactly_and_peak_above_the_threshold():
    amap = np.random.default_rng(0).random((40, 50)) * 1.3
    regions = defect_regions(amap, CAL)
    mask = defect_pixels(amap, CAL)
    assert len(regions) > 5 and sum(r["area"] for r in regions) == mask.sum()
    covered = np.zeros_like(mask)
    for region in regions:
        box = (slice(region["y"], region["y"] + region["height"]), slice(region["x"], region["x"] + region["width"]))
        covered[box] = True
        assert CAL["map_threshold"] < region["peak"] <= amap[box].max() and region["peak"] in amap[box]
        assert region["area"] <= mask[box].sum()
        assert region["normalised_peak"] > 0.5  # the pixel threshold is 0.5 on the normalised scale
    assert covered[mask].all()  # every defect pixel lies in some region's box
    labels, in_label_order = labelled_regions(amap, CAL)
    assert sorted(in_label_order, key=lambda r: -r["peak"]) == regions and (labels > 0).sum() == mask.sum()
    for number, region in enumerate(in_label_order, 1):  # the label image marks each region's own pixels
        assert (labels == number).sum() == region["area"] and amap[labels == number].max() == region["peak"]
    peaks = [r["peak"] for r in regions]
    assert peaks == sorted(peaks, reverse=True) and peaks[0] == amap.max()


def test_hits_against_marked_defects_and_the_figures_of_a_split():
    cal = {"map_median": 0.0, "map_threshold": 1.0}
    mask = np.zeros((20, 20), dtype=bool)
    mask[1:5, 1:5] = mask[15:18, 15:18] = True  # two defects; the second is missed
    amap = np.zeros((20, 20))
    amap[2:5, 2:5] = 2.0  # a 9-pixel region on the first defect
    amap[10:12, 0:2] = 3.0  # a 4-pixel region off the defects, with the highest peak
    small, large = region_hits(amap, mask, cal, [1, 5])
    assert small == {"truth_regions": 2, "truth_found": 1, "regions": 2, "regions_on_defect": 1, "top_on_defect": False}
    assert large == {"truth_regions": 2, "truth_found": 1, "regions": 1, "regions_on_defect": 1, "top_on_defect": True}
    good = region_hits(amap, np.zeros_like(mask), cal, [1, 5])
    clear = region_hits(np.zeros((20, 20)), np.zeros_like(mask), cal, [1, 5])
    unmarked = region_hits(amap, np.zeros_like(mask), cal, [1, 5])  # a defective image without a marked region
    table = region_figures([[small, large], good, clear, unmarked], [1, 0, 0, 1], [1, 5])
    assert table[0] == {"min_area": 1, "defective_images": 1, "truth_regions": 2, "defects_found": 0.5,
                        "defective_images_outlined": 1.0, "top_region_on_defect": 0.0,
                        "top_region_on_defect_when_outlined": 0.0, "regions_on_defect": 0.5,
                        "regions_per_defective_image": 2.0, "good_images": 2, "good_images_clear": 0.5,
                        "regions_per_good_image": 1.0}  # fmt: skip
    assert table[1]["top_region_on_defect"] == 1.0 and table[1]["regions_per_good_image"] == 0.5
    # Nothing to count is None, not a division by zero.
    [empty] = region_figures([clear], [0], [1])
    assert empty["defects_found"] is None and empty["top_region_on_defect_when_outlined"] is None
    assert empty["good_images_clear"] == 1.0

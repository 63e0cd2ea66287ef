"""Do the outlined regions point at the defects? Region-level figures at each checkpoint's own pixel threshold.

    python bench/regions.py RUN/model.ckpt... [--set data.anomalies=10 ...] [--min-areas 1,16,64,256] \
        [--out bench/results/regions.json]

Each checkpoint scores its test split through the shared inference path (maps at each image's original size), and
its predicted regions are what `predict` writes to regions.csv: the 8-connected parts of the map above the pixel
threshold that `train` calibrated on validation normals (`defect_regions`), leaving out those under each
`--min-areas` value. Against the ground-truth regions (8-connected parts of the masks), per minimum area:

- defects found: the share of ground-truth regions that a predicted region overlaps (by one pixel or more);
- top region on a defect: the share of defective images whose highest-peak region overlaps their defect, and the
  same among the defective images that have a region at all (when a defect is outlined, is it the right place?);
- regions on a defect: the share of the predicted regions on defective images that overlap a defect;
- good images clear: the share of good images with no predicted region, and the regions per good image.

Defective images with an empty mask (four `uneven` tiles of Magnetic Tile) have no region to find and are left out
of the first three. Nothing is fitted on the test images. `--set` gives a k = 0 checkpoint a few-shot model's
hold-out, as in bench/holdout.py.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from holdout import hold_out_overrides, on_hold_out
from scipy import ndimage

from defectmap import engine
from defectmap.regions import labelled_regions

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def image_counts(anomaly_map: np.ndarray, mask: np.ndarray, calibration: dict, min_areas: list[int]) -> list[dict]:
    """One image's counts per minimum area: its ground-truth regions found, its predicted regions and their hits."""
    labels, regions = labelled_regions(anomaly_map, calibration)
    truth, truths = ndimage.label(mask, structure=EIGHT_CONNECTED)
    on_defect = np.zeros(len(regions) + 1, dtype=bool)
    on_defect[np.unique(labels[mask])] = True  # predicted regions (by label) with a defect pixel; 0 is background
    areas = np.array([0] + [r["area"] for r in regions])
    peaks = np.array([-np.inf] + [r["peak"] for r in regions])
    pairs = np.unique(np.stack([truth[mask], labels[mask]]), axis=1)  # (truth label, predicted label) that touch
    rows = []
    for min_area in min_areas:
        kept = areas >= min_area  # never the background: its area is 0
        touching = pairs[:, kept[pairs[1]]] if pairs.size else pairs
        top = int(np.argmax(np.where(kept, peaks, -np.inf))) if kept.any() else 0
        rows.append({
            "truth_regions": truths,
            "truth_found": len(np.unique(touching[0])) if touching.size else 0,
            "regions": int(kept.sum()),
            "regions_on_defect": int((kept & on_defect).sum()),
            "top_on_defect": bool(top and on_defect[top]),
        })  # fmt: skip
    return rows


def summarise(per_image: list[list[dict]], labels: list[int], min_areas: list[int]) -> list[dict]:
    """The shares over the test split, per minimum area."""
    table = []
    for i, min_area in enumerate(min_areas):
        rows = [image[i] for image in per_image]
        defective = [r for r, label in zip(rows, labels, strict=True) if label == 1 and r["truth_regions"]]
        good = [r for r, label in zip(rows, labels, strict=True) if label == 0]
        on_defective = sum(r["regions"] for r in defective)
        hits = sum(r["regions_on_defect"] for r in defective)
        outlined = [r for r in defective if r["regions"]]
        table.append({
            "min_area": min_area,
            "defective_images": len(defective),
            "truth_regions": sum(r["truth_regions"] for r in defective),
            "defects_found": sum(r["truth_found"] for r in defective) / sum(r["truth_regions"] for r in defective),
            "top_region_on_defect": sum(r["top_on_defect"] for r in defective) / len(defective),
            "defective_images_outlined": len(outlined) / len(defective),
            "top_region_on_defect_when_outlined": (
                sum(r["top_on_defect"] for r in outlined) / len(outlined) if outlined else None
            ),
            "regions_on_defect": hits / on_defective if on_defective else None,
            "regions_per_defective_image": on_defective / len(defective),
            "good_images": len(good),
            "good_images_clear": sum(r["regions"] == 0 for r in good) / len(good),
            "regions_per_good_image": sum(r["regions"] for r in good) / len(good),
        })  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE")
    parser.add_argument("--min-areas", default="1,16,64,256", help="comma-separated minimum region sizes, pixels")
    parser.add_argument("--out", default="bench/results/regions.json")
    args = parser.parse_args()
    overrides = hold_out_overrides(parser, args.set)
    min_areas = [int(a) for a in args.min_areas.split(",")]
    if min(min_areas) < 1:
        parser.error("--min-areas must be at least 1")
    report = {"call": f"python bench/regions.py {' '.join(args.checkpoints)} --min-areas {args.min_areas}"
              + "".join(f" --set {s}" for s in args.set), "runs": []}  # fmt: skip
    for checkpoint in args.checkpoints:
        detector, category = on_hold_out(checkpoint, overrides)
        if not category.has_masks:
            parser.error(f"{checkpoint}: its category has no ground-truth masks to count regions against")
        outputs = engine.test_outputs(detector, category, progress=False)
        per_image = [
            image_counts(m, mask, detector.calibration, min_areas)
            for m, mask in zip(outputs["maps"], outputs["masks"], strict=True)
        ]
        table = summarise(per_image, outputs["labels"], min_areas)
        report["runs"].append({"checkpoint": checkpoint, "method": detector.config.method,
                               "test_images": len(outputs["labels"]), "table": table})  # fmt: skip
        for row in table:
            share, when = (
                "n/a" if row[key] is None else f"{row[key]:.3f}"
                for key in ("regions_on_defect", "top_region_on_defect_when_outlined")
            )
            print(
                f"{checkpoint} min area {row['min_area']:>4}: defects found {row['defects_found']:.3f}, "
                f"defective images outlined {row['defective_images_outlined']:.3f}, top region on a defect "
                f"{row['top_region_on_defect']:.3f} ({when} of those outlined), regions on a defect {share}, "
                f"good images clear {row['good_images_clear']:.3f} ({row['regions_per_good_image']:.2f} regions each)"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

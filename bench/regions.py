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

from holdout import hold_out_overrides, on_hold_out

from defectmap import engine
from defectmap.regions import region_figures, region_hits


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
            region_hits(m, mask, detector.calibration, min_areas)
            for m, mask in zip(outputs["maps"], outputs["masks"], strict=True)
        ]
        table = region_figures(per_image, outputs["labels"], min_areas)
        report["runs"].append({"checkpoint": checkpoint, "method": detector.config.method,
                               "test_images": len(outputs["labels"]), "table": table})  # fmt: skip
        for row in table:
            f = {k: "n/a" if v is None else f"{v:.3f}" for k, v in row.items()}
            print(
                f"{checkpoint} min area {row['min_area']:>4}: defects found {f['defects_found']}, defective images "
                f"outlined {f['defective_images_outlined']}, top region on a defect {f['top_region_on_defect']} "
                f"({f['top_region_on_defect_when_outlined']} of those outlined), regions on a defect "
                f"{f['regions_on_defect']}, good images clear {f['good_images_clear']} "
                f"({f['regions_per_good_image']} regions each)"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

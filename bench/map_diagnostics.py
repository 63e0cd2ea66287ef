"""Where a reconstruction model's image score comes from: per defect type, and how often it sits on the border.

    python bench/map_diagnostics.py RUN/model.ckpt [--variants none,normalize] [--out bench/results/diag.json]

For each post-processing variant (see bench/postprocess.py) of the same weights, on the test split at
each image's original resolution: image AUROC and AU-PRO of every defect type against the good images, how
many of each type the calibrated threshold misses, and the share of good and of defective images whose map
maximum (the image score of AE and PMB) lies within `--border` (a fraction of the height or width) of the
image edge.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from postprocess import STEPS, parse_variants, with_postprocess

from defectmap import engine, metrics
from defectmap.data.mvtec import open_category


def border_share(maps: list[np.ndarray], border: float) -> float:
    """Share of maps whose maximum lies within `border` x height (or width) of the image edge."""
    near = []
    for anomaly_map in maps:
        height, width = anomaly_map.shape
        y, x = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
        near.append(min(y, height - 1 - y) < border * height or min(x, width - 1 - x) < border * width)
    return float(np.mean(near))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--variants", default="none,normalize", help=f"comma-separated, each none or steps of "
                        f"{', '.join(STEPS)} joined by + (see bench/postprocess.py)")  # fmt: skip
    parser.add_argument("--border", type=float, default=0.05)
    parser.add_argument("--out", default="bench/results/map_diagnostics.json")
    args = parser.parse_args()
    variants = parse_variants(args.variants, parser)
    base = engine.load(args.checkpoint)
    category = open_category(base.config.data)
    defects = np.array([sample.defect for sample in category.test])
    rows = []
    for name, overrides in variants.items():
        detector = with_postprocess(base, category, overrides)
        outputs = engine.test_outputs(detector, category, progress=False)
        labels, scores = np.array(outputs["labels"]), np.array(outputs["scores"])
        good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
        row = {"variant": name, "image_auroc": metrics.image_auroc(labels, scores)}
        row["max_near_border_good"] = border_share([outputs["maps"][i] for i in good], args.border)
        row["max_near_border_defective"] = border_share([outputs["maps"][i] for i in bad], args.border)
        row["defect_types"] = metrics.per_defect_type(labels, scores, defects, detector.calibration["threshold"])
        for defect, entry in row["defect_types"].items():
            chosen = np.concatenate([good, np.flatnonzero(defects == defect)])
            entry["aupro"] = metrics.aupro([outputs["masks"][i] for i in chosen], [outputs["maps"][i] for i in chosen])
        rows.append(row)
        types = "  ".join(f"{d} {v['image_auroc']:.3f}/{v['aupro']:.3f}" for d, v in row["defect_types"].items())
        print(f"{name}: image AUROC {row['image_auroc']:.4f}; map max near the border: good "
              f"{row['max_near_border_good']:.2f}, defective {row['max_near_border_defective']:.2f}; "
              f"per type (image AUROC/AU-PRO) {types}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": args.checkpoint, "border": args.border, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

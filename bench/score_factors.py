"""Where two models' image scores differ: per defect type, and with the good tiles' brightness.

    python bench/score_factors.py HARD_CASES.json... --train-dir ../shared/data/magnetic_tile/train/good \
        [--out bench/results/score_factors.json]

Reads the per-image scores that bench/hard_cases.py writes for two checkpoints (a, b) and reports, per file:
each model's image AUROC per defect type (that type's images against all good ones), and the Spearman
correlation of each model's scores of the good test images with their mean grey level and with its distance from
the median of the good training images. The second tests one explanation of why few-shot PRN gains no image
AUROC: that real `uneven` anomalies (whole-tile brightness changes) teach a model that brightness is a defect,
while good tiles vary in brightness too. If it held, the few-shot model's good-image scores would follow the
distance more closely than the other model's.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import spearmanr

from defectmap import metrics

SIDES = ("a", "b")  # the two checkpoints of a hard_cases.py file


def grey_level(path: str | Path) -> float:
    return float(np.asarray(Image.open(path).convert("L"), dtype=np.float32).mean())


def per_type_auroc(images: list[dict], model: str) -> dict[str, float]:
    labels = [int(row["defect"] != "good") for row in images]
    scores = [row[f"score_{model}"] for row in images]
    types = metrics.per_defect_type(labels, scores, [row["defect"] for row in images], threshold=float("inf"))
    return {defect: figures["image_auroc"] for defect, figures in types.items()}


def factors(cases: dict, train_median: float) -> dict:
    images = cases["images"]
    good = [row for row in images if row["defect"] == "good"]
    levels = np.array([grey_level(row["path"]) for row in good])
    out = {"a": cases["a"], "b": cases["b"], "good_images": len(good)}
    for model in SIDES:
        scores = np.array([row[f"score_{model}"] for row in good])
        out[f"auroc_per_type_{model}"] = per_type_auroc(images, model)
        out[f"spearman_{model}_distance"] = float(spearmanr(scores, np.abs(levels - train_median))[0])
        out[f"spearman_{model}_level"] = float(spearmanr(scores, levels)[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", help="JSON files written by bench/hard_cases.py")
    parser.add_argument("--train-dir", required=True, help="the good training images, for the median grey level")
    parser.add_argument("--out")
    args = parser.parse_args()
    train = sorted(p for p in Path(args.train_dir).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not train:
        raise SystemExit(f"no .jpg or .png images in {args.train_dir}")
    median = float(np.median([grey_level(p) for p in train]))
    rows = [{"file": path, **factors(json.loads(Path(path).read_text()), median)} for path in args.cases]
    print(f"median grey level of {len(train)} good training images: {median:.1f}")
    for r in rows:
        print(f"\n{r['file']}\n  a = {r['a']}\n  b = {r['b']}")
        for defect, auroc in r["auroc_per_type_a"].items():
            gain = 100 * (r["auroc_per_type_b"][defect] - auroc)
            print(f"  {defect:10s} image AUROC a {auroc:.3f}  b {r['auroc_per_type_b'][defect]:.3f}  ({gain:+.1f})")
        print(f"  good images, Spearman of the score with |grey level - median|: a {r['spearman_a_distance']:+.2f}, "
              f"b {r['spearman_b_distance']:+.2f}; with the grey level: a {r['spearman_a_level']:+.2f}, "
              f"b {r['spearman_b_level']:+.2f}")  # fmt: skip
    if args.out:
        result = {"command": " ".join(["python", *sys.argv]), "train_median_level": median, "files": rows}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

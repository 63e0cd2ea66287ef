"""Is one model's image AUROC above another's on the same test images? A paired bootstrap interval.

    python bench/paired_auroc.py --pair A B [--pair A B ...] [--level 0.95] [--out FILE]

A and B name per-image scores: a run's `metrics.json` (its `images` list), or one side of a
`bench/hard_cases.py` file as FILE:a or FILE:b. The two are matched by image path (the images both
scored; an image labelled differently in the two is an error). For each pair the script prints
AUROC(A) - AUROC(B) in points and its percentile bootstrap interval over the test images
(`defectmap.metrics.image_auroc_interval` with `other`: the good and defective images are resampled
separately, the same resample for both models). The interval covers test-set sampling only, not the
training seed: a difference whose interval excludes 0 would likely hold on another test set of this
size for these two trained models.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from defectmap.metrics import image_auroc, image_auroc_interval


def read_scores(name: str) -> dict[str, tuple[int, float]]:
    """{image path: (label, score)} from a metrics.json or a hard_cases.py file's side (FILE:a / FILE:b)."""
    file, _, side = name.rpartition(":") if name.endswith((":a", ":b")) else (name, "", "")
    data = json.loads(Path(file).read_text())
    if side:
        return {i["path"]: (int(i["defect"] != "good"), float(i[f"score_{side}"])) for i in data["images"]}
    if not data.get("images"):
        raise SystemExit(f"{file} has no per-image scores ('images'); score the run again with defectmap test")
    return {i["path"]: (int(i["label"]), float(i["score"])) for i in data["images"]}


def compare(a: str, b: str, level: float) -> dict:
    scores_a, scores_b = read_scores(a), read_scores(b)
    paths = sorted(set(scores_a) & set(scores_b))
    if not paths:
        raise SystemExit(f"{a} and {b} share no image")
    wrong = [p for p in paths if scores_a[p][0] != scores_b[p][0]]
    if wrong:
        raise SystemExit(f"{a} and {b} label {wrong[0]} differently")
    labels = np.array([scores_a[p][0] for p in paths])
    first, second = np.array([scores_a[p][1] for p in paths]), np.array([scores_b[p][1] for p in paths])
    low, high = image_auroc_interval(labels, first, second, level=level)
    return {"a": a, "b": b, "images": len(paths), "defective": int(labels.sum()),
            "image_auroc_a": image_auroc(labels, first), "image_auroc_b": image_auroc(labels, second),
            "difference_points": 100 * (image_auroc(labels, first) - image_auroc(labels, second)),
            "interval_points": [100 * low, 100 * high], "level": level}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", nargs=2, action="append", required=True, metavar=("A", "B"))
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = [compare(a, b, args.level) for a, b in args.pair]
    print(f"| A | B | images | AUROC A | AUROC B | A - B (points) | {args.level:.0%} interval |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        low, high = r["interval_points"]
        print(f"| {r['a']} | {r['b']} | {r['images']} | {r['image_auroc_a']:.4f} | {r['image_auroc_b']:.4f} "
              f"| {r['difference_points']:+.1f} | {low:+.1f} to {high:+.1f} |")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"pairs": rows}, indent=2))


if __name__ == "__main__":
    main()

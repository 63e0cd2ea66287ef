"""Do the good test images score like the validation images a threshold was set on?

    python bench/calibration_shift.py CKPT TEST/metrics.json [CKPT METRICS ...] [--out bench/results/shift.json]

Scores each checkpoint's own validation images (its config's split; the dataset must be on disk) and compares them
with the good images' scores in the matching metrics.json (`defectmap test` of the same weights): median, 90th and
99th percentiles, how many are above the threshold, and a two-sided Mann-Whitney p-value. A threshold at a high
quantile of the validation scores fails where the tails differ, even where the medians agree.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu

from defectmap import engine
from defectmap.data.mvtec import open_category


def summary(scores: list[float], threshold: float) -> dict:
    s = np.asarray(scores, dtype=np.float64)
    return {"images": len(s), "median": float(np.median(s)), "q90": float(np.quantile(s, 0.9)),
            "q99": float(np.quantile(s, 0.99)), "above_threshold": int((s > threshold).sum())}  # fmt: skip


def compare(checkpoint: str, metrics: str) -> dict:
    detector = engine.load(checkpoint, device="cpu")
    val = open_category(detector.config.data).val
    val_scores = [row["score"] for row in engine.predict(detector, val, progress=False)]
    good = [image["score"] for image in json.loads(Path(metrics).read_text())["images"] if image["label"] == 0]
    threshold = detector.calibration["threshold"]
    return {"checkpoint": checkpoint, "metrics": metrics, "threshold": threshold,
            "validation": summary(val_scores, threshold), "test_good": summary(good, threshold),
            "mann_whitney_p": float(mannwhitneyu(val_scores, good).pvalue)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="CKPT METRICS pairs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give checkpoints and metrics.json files in pairs")
    rows = [compare(c, m) for c, m in zip(args.pairs[::2], args.pairs[1::2], strict=True)]
    for row in rows:
        v, t = row["validation"], row["test_good"]
        print(f"{row['checkpoint']}: median {v['median']:.4g} / {t['median']:.4g}, 90th percentile {v['q90']:.4g} / "
              f"{t['q90']:.4g}, above the threshold {v['above_threshold']} of {v['images']} / {t['above_threshold']} "
              f"of {t['images']} (validation / good test), Mann-Whitney p {row['mann_whitney_p']:.2g}")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

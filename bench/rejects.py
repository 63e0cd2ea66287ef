"""What a checkpoint's threshold decides on a test already scored: good images rejected and defects missed.

    python bench/rejects.py CKPT[,CKPT...] TEST/metrics.json[,...] [--out bench/results/rejects.json]

Reads the threshold from each checkpoint (after `defectmap threshold CKPT --good DIR`, say) and counts, among the
per-image scores of the matching metrics.json (`defectmap test` of the same weights), the good images above it and the
defective images at or below it, beside how many good images the threshold's own good images promised it would reject
(`defectmap.threshold.rejections_expected`: about `expected`, at most `at_most` at 95% confidence). Nothing is scored
again.
"""

import argparse
import json
from pathlib import Path

from defectmap.checkpoint import load_checkpoint
from defectmap.threshold import calibration_outlook, rejections_expected


def decisions(threshold: float, images: list[dict]) -> dict:
    """Good images rejected and defects missed at `threshold`, of how many."""
    good = [i["score"] for i in images if i["label"] == 0]
    bad = [i["score"] for i in images if i["label"] == 1]
    return {
        "threshold": threshold,
        "good_rejected": sum(s > threshold for s in good),
        "of_good": len(good),
        "defects_missed": sum(s <= threshold for s in bad),
        "of_defective": len(bad),
    }


def promised(calibration: dict, good_images: int) -> dict | None:
    """Good images the threshold should reject of `good_images`, by its calibration (None: a max-F1 threshold)."""
    outlook = calibration_outlook(calibration)
    if outlook is None:
        return None
    expected, most = rejections_expected(outlook["expected_false_reject_rate"], calibration["val_images"], good_images)
    return {"calibration_images": calibration["val_images"], "expected": expected, "at_most": most}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", help="comma-separated checkpoints")
    parser.add_argument("metrics", help="comma-separated metrics.json files, one per checkpoint")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    checkpoints, metrics_files = args.checkpoints.split(","), args.metrics.split(",")
    if len(checkpoints) != len(metrics_files):
        parser.error("give one metrics.json per checkpoint")
    rows = []
    for checkpoint, metrics in zip(checkpoints, metrics_files, strict=True):
        calibration = load_checkpoint(checkpoint)["calibration"]
        report = json.loads(Path(metrics).read_text())
        row = {"checkpoint": checkpoint, "metrics": metrics, "threshold_rule": calibration.get("threshold_rule"),
               "calibrated": decisions(calibration["threshold"], report["images"]),
               "as_tested": decisions(report["threshold"], report["images"])}  # fmt: skip
        row["promised"] = promised(calibration, row["calibrated"]["of_good"])
        rows.append(row)
        c, t, p = row["calibrated"], row["as_tested"], row["promised"]
        promise = f"; promised about {p['expected']:.1f}, at most {p['at_most']}" if p else ""
        print(
            f"{checkpoint}: {c['good_rejected']} of {c['of_good']} good rejected{promise}, {c['defects_missed']} of "
            f"{c['of_defective']} defects missed (as tested: {t['good_rejected']}, {t['defects_missed']})"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

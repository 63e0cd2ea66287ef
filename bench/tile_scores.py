"""Image scores of checkpoints scored on tiles (`data.tile`): the highest window score against scores read from the
stitched map, where overlapping windows are averaged, and the rule `data.tile_score=auto` chooses.

    python bench/tile_scores.py RUN/model.ckpt [...] [--top-k 25,100] [--out bench/results/tile_scores.json]

A spot that one window scores high and the window overlapping it does not is halved in the stitched map, so the
map's maximum asks two windows to agree where they overlap. This scores each checkpoint's test split once and
reads every score from the same windows and maps. The test images choose nothing: the choice is made as training
makes it (`choose_tile_score`, on the validation normals with synthetic defects), the threshold set as training sets
it (the false-reject rate on the validation normals, scored by the chosen rule), then both read on the test split.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defectmap import engine, metrics  # noqa: E402
from defectmap.calibration import choose_tile_score, recalibrate  # noqa: E402
from defectmap.data.mvtec import open_category  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--top-k", default="25,100", help="also the mean of the stitched map's top k pixels")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    ks = [int(k) for k in args.top_k.split(",") if k]
    rows = []
    for path in args.checkpoints:
        detector = engine.load(path)
        samples = engine.test_split(detector).test
        if not detector.config.data.tile:
            sys.exit(f"{path} is not scored on tiles (data.tile is 0)")
        recorded = detector.config.data.tile_score
        detector.config.data.tile_score = "auto"  # choose again, as training does, on the validation normals
        normals = open_category(detector.config.data).val
        validation = choose_tile_score(detector.config, detector.model, normals, detector.device)[0]
        chosen, detector.config.data.tile_score = detector.config.data.tile_score, "window"
        dataset = engine.scoring_set(detector.config, samples)
        labels = []
        scores = {"highest window": [], "stitched map maximum": [], **{f"stitched map top {k}": [] for k in ks}}
        for result in engine.infer(detector.model, dataset, detector.config.train.eval_batch_size, detector.device):
            labels.append(samples[result["index"]].label)
            ranked = np.sort(result["map"].ravel())[::-1]
            scores["highest window"].append(result["score"])
            scores["stitched map maximum"].append(float(ranked[0]))
            for k in ks:
                scores[f"stitched map top {k}"].append(float(ranked[:k].mean()))
        aurocs = {name: metrics.image_auroc(np.array(labels), np.array(values)) for name, values in scores.items()}
        reading = "stitched map maximum" if chosen == "map" else "highest window"
        aurocs["chosen on validation"] = aurocs[reading]
        # The threshold training would now set: the false-reject rate on the validation normals, scored by the rule.
        detector.config.data.tile_score = chosen
        threshold = recalibrate(detector, detector.config.train.false_reject_rate)["threshold"]
        chosen_scores, labels = np.array(scores[reading]), np.array(labels)
        decisions = {"threshold": threshold, "good_rejected": int(((chosen_scores > threshold) & (labels == 0)).sum()),
                     "defects_missed": int(((chosen_scores <= threshold) & (labels == 1)).sum())}  # fmt: skip
        rows.append({"checkpoint": path, "method": detector.config.method, "tile": detector.config.data.tile,
                     "test_images": len(samples), "image_auroc": aurocs, "recorded_tile_score": recorded,
                     "chosen": chosen, "validation_synthetic_image_auroc": validation,
                     "chosen_rule": decisions})  # fmt: skip
        print(
            f"{path}: chose {chosen} (validation, synthetic: window {validation['window']:.3f}, map "
            f"{validation['map']:.3f}); test "
            + ", ".join(f"{k} {v:.3f}" for k, v in aurocs.items())
            + f"; with its threshold {decisions['good_rejected']} good rejected, {decisions['defects_missed']} missed",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

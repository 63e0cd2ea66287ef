"""Which test images hold image AUROC down, and whether two models share them.

    python bench/hard_cases.py --a RUN_A/model.ckpt --b RUN_B/model.ckpt [--set data.anomaly_sampling=per_type] \
        [--top 20] [--out bench/results/hard_cases.json] [--figure top_normals.png]

Scores the test split with both checkpoints (the shared inference path; both must see the same test images,
so give a k = 0 checkpoint the few-shot model's hold-out with `--set`, as in bench/holdout.py) and reports:
image AUROC; the share of mis-ordered (normal, defective) pairs that the `--top` highest-scoring normals take
part in; how many of each model's top normals the other model has among its top; the Spearman correlation of
the two models' scores over normals and over defective images; and the defective images each model ranks
below its median normal, by defect type. The per-image scores are written too, so the figures can be redone.
`--figure` writes each model's four highest-scoring normals (first row: a, second: b), to look at.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from holdout import hold_out_overrides, on_hold_out
from PIL import Image
from scipy.stats import spearmanr

from defectmap import engine, metrics


def scored(checkpoint: str, overrides: dict) -> dict:
    detector, category = on_hold_out(checkpoint, overrides)
    outputs = engine.test_outputs(detector, category, progress=False)
    paths = [str(s.path) for s in category.test]
    defects = [s.defect for s in category.test]
    if outputs["labels"] != [s.label for s in category.test]:
        raise SystemExit("test outputs came back in another order than the test split")
    return {
        "paths": paths,
        "defects": defects,
        "labels": np.array(outputs["labels"]),
        "scores": np.array(outputs["scores"]),
    }


def hard_cases(run: dict, top: int) -> dict:
    """Image AUROC, the top normals and their share of the mis-ordered pairs, weak defects by type."""
    labels, scores = run["labels"], run["scores"]
    normals, defects = scores[labels == 0], scores[labels == 1]
    misordered = normals[:, None] >= defects[None, :]  # (normal, defective) pairs ranked wrongly (ties count)
    order = np.argsort(-normals)[:top]
    top_normals = np.flatnonzero(labels == 0)[order]  # their indices in the test split
    median = np.median(normals)
    weak = Counter(run["defects"][i] for i in np.flatnonzero(labels == 1) if scores[i] <= median)
    return {
        "image_auroc": metrics.image_auroc(labels, scores),
        "misordered_pairs": int(misordered.sum()),
        "share_from_top_normals": float(misordered[order].sum() / max(misordered.sum(), 1)),
        "auroc_without_top_normals": metrics.image_auroc(
            np.delete(labels, top_normals), np.delete(scores, top_normals)
        ),
        "top_normals": [run["paths"][i] for i in top_normals],
        "defective_below_median_normal": dict(weak),
    }


def top_normals_figure(report: dict, path: str, size: int = 192) -> None:
    """Each model's four highest-scoring normal test images, as two rows of grey tiles."""
    rows = [report["hard_a"]["top_normals"][:4], report["hard_b"]["top_normals"][:4]]
    sheet = Image.new("L", (4 * size, 2 * size))
    for r, paths in enumerate(rows):
        for c, image in enumerate(paths):
            sheet.paste(Image.open(image).convert("L").resize((size, size)), (c * size, r * size))
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="first checkpoint")
    parser.add_argument("--b", required=True, help="second checkpoint, scored on the same test images")
    parser.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE")
    parser.add_argument("--top", type=int, default=20, help="how many of the highest-scoring normals to follow")
    parser.add_argument("--out", default="bench/results/hard_cases.json")
    parser.add_argument("--figure", help="PNG of each model's four highest-scoring normals")
    args = parser.parse_args()
    overrides = hold_out_overrides(parser, args.set)
    a, b = scored(args.a, overrides), scored(args.b, overrides)
    if a["paths"] != b["paths"]:
        parser.error("the two checkpoints are evaluated on different test images; name the same hold-out with --set")
    report = {"command": " ".join(["python", *sys.argv]), "a": args.a, "b": args.b}
    report["hard_a"], report["hard_b"] = hard_cases(a, args.top), hard_cases(b, args.top)
    shared = set(report["hard_a"]["top_normals"]) & set(report["hard_b"]["top_normals"])
    normal = a["labels"] == 0
    report["shared_top_normals"] = len(shared)
    report["spearman_normals"] = float(spearmanr(a["scores"][normal], b["scores"][normal]).statistic)
    report["spearman_defective"] = float(spearmanr(a["scores"][~normal], b["scores"][~normal]).statistic)
    report["images"] = [
        {"path": p, "defect": d, "score_a": float(sa), "score_b": float(sb)}
        for p, d, sa, sb in zip(a["paths"], a["defects"], a["scores"], b["scores"], strict=True)
    ]
    for name in ("hard_a", "hard_b"):
        h = report[name]
        print(
            f"{name[-1]}: image AUROC {h['image_auroc']:.4f}; top {args.top} normals take part in "
            f"{100 * h['share_from_top_normals']:.0f}% of {h['misordered_pairs']} mis-ordered pairs "
            f"(AUROC without them {h['auroc_without_top_normals']:.4f}); defective below the median normal: "
            f"{h['defective_below_median_normal']}"
        )
    print(
        f"shared top-{args.top} normals: {len(shared)}; Spearman over normals {report['spearman_normals']:.3f}, "
        f"over defective {report['spearman_defective']:.3f}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    if args.figure:
        top_normals_figure(report, args.figure)


if __name__ == "__main__":
    main()

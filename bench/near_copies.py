"""Is one physical part in training and in test? Near-copies on Magnetic Tile, and what they do to few-shot figures.

    python bench/near_copies.py RUN/model.ckpt [...] --set data.anomalies=10 --set data.anomaly_seed=0 \
        --set data.anomaly_sampling=per_type [--thresholds 0.5,0.7] [--figure docs/near_copies.png] \
        [--out bench/results/near_copies.json]

Magnetic Tile photographs each tile under several lighting settings (the `expN` in its file names; one tile's shots
have nearby `num`s), and those shots are separate files, so one tile can be in training and in test. Near-copies are
measured as `defectmap.data.near_copies` does for `data.near_copy_similarity` (fine texture cross-correlated, all
images at one scale), at each of `--thresholds` (the first for the counts and the figure). It counts:

- test images with a near-copy among the training normals (`train/good`);
- test images that are near-copies of the few-shot training anomalies the `--set` hold-out draws.

Then it scores each checkpoint on the test set that hold-out leaves (the shared inference path, maps at each image's
original size) and reports the metrics on that test set and, per threshold, without the near-copies of the training
anomalies (a few-shot model has seen their tile). Pass the k = 0 and k = 10 checkpoints of one seed with that seed's
hold-out. A diagnostic: nothing here changes what `test` or `benchmark` report.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from holdout import hold_out_overrides, on_hold_out
from PIL import Image, ImageDraw

from defectmap import engine, metrics
from defectmap.data.mvtec import open_category
from defectmap.data.near_copies import signatures, similarities


def _signed(paths: list[Path], max_pixels: int) -> dict[Path, tuple[np.ndarray, int]]:
    """Each image's signature, all of them at one scale (the median shorter side of these images)."""
    return dict(zip(paths, signatures(paths, max_pixels), strict=True))


def best_matches(queries: list[Path], references: list[Path], found: dict) -> list[tuple[float, Path]]:
    """For each query, its highest similarity to any reference and that reference."""
    matrix = similarities([found[q] for q in queries], [found[r] for r in references])
    return [(float(matrix[i, j]), references[j]) for i, j in enumerate(matrix.argmax(axis=1))]


def figure(groups: list[tuple[Path, list[tuple[float, Path]]]], path: str, per_row: int = 6) -> None:
    """One row per training anomaly: it, a gap, then its most similar near-copies in the test set (similarity
    printed under each), 160 pixels high."""
    rows = []
    for anomaly, copies in groups:
        shots = [(None, anomaly)] + sorted(copies, key=lambda c: -c[0])[:per_row]
        pictures = [Image.open(p).convert("L") for _, p in shots]
        pictures = [s.resize((round(s.width * 160 / s.height), 160)) for s in pictures]
        row = Image.new("L", (sum(s.width + 8 for s in pictures) + 16, 176), 255)
        draw, x = ImageDraw.Draw(row), 0
        for (value, _), picture in zip(shots, pictures, strict=True):
            row.paste(picture, (x, 0))
            draw.text((x + 2, 163), "trained on" if value is None else f"{value:.2f}", fill=0)
            x += picture.width + (24 if value is None else 8)
        rows.append(row)
    sheet = Image.new("L", (max(r.width for r in rows), sum(r.height + 8 for r in rows)), 255)
    for i, row in enumerate(rows):
        sheet.paste(row, (0, i * 184))
    sheet.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE")
    parser.add_argument("--thresholds", default="0.5,0.7", help="comma-separated similarity thresholds")
    parser.add_argument("--figure", help="PNG: the training anomalies that have near-copies, and those copies")
    parser.add_argument("--out", default="bench/results/near_copies.json")
    args = parser.parse_args()
    overrides = hold_out_overrides(parser, args.set)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    threshold = thresholds[0]
    detector, category = on_hold_out(args.checkpoints[0], overrides)
    if not category.anomalies:
        parser.error("name a few-shot hold-out: --set data.anomalies=K (and its seed and sampling)")
    whole = open_category(detector.config.data)
    train = whole.train + whole.val  # every training normal, the validation share included
    test, anomalies = [s.path for s in category.test], [s.path for s in category.anomalies]
    limit = detector.config.data.max_pixels
    train_match = best_matches(test, [s.path for s in train], _signed(test + [s.path for s in train], limit))
    anomaly_match = best_matches(test, anomalies, _signed(anomalies + test, limit))  # as data.near_copy_similarity does
    near = [i for i, (value, _) in enumerate(anomaly_match) if value >= threshold]
    subsets = {"all": list(range(len(test)))}
    for t in thresholds:
        subsets[f"without_near_copies_{t:g}"] = [i for i, (value, _) in enumerate(anomaly_match) if value < t]
    labels = np.array([s.label for s in category.test])
    report = {
        "call": "python bench/near_copies.py "
        + " ".join(args.checkpoints)
        + "".join(f" --set {s}" for s in args.set)
        + f" --thresholds {args.thresholds}",
        "test_images": len(test),
        "test_with_a_near_copy_in_train_good": {
            "good": sum(v >= threshold for (v, _), y in zip(train_match, labels, strict=True) if y == 0),
            "of_good": int((labels == 0).sum()),
            "defective": sum(v >= threshold for (v, _), y in zip(train_match, labels, strict=True) if y == 1),
            "of_defective": int((labels == 1).sum()),
        },
        "training_anomalies": [str(p) for p in anomalies],
        "near_copies_of_training_anomalies": [
            {
                "test_image": str(test[i]),
                "of": str(anomaly_match[i][1]),
                "similarity": round(anomaly_match[i][0], 3),
                "defective": bool(labels[i]),
            }
            for i in near
        ],
        "runs": [],
    }
    copies = report["test_with_a_near_copy_in_train_good"]
    print(
        f"{copies['good']} of {copies['of_good']} good and {copies['defective']} of {copies['of_defective']} "
        f"defective test images have a near-copy among the training normals; {len(near)} test images "
        f"({int(labels[near].sum())} defective) are near-copies of the {len(anomalies)} training anomalies"
    )
    for checkpoint in args.checkpoints:
        detector, category = on_hold_out(checkpoint, overrides)
        out = engine.test_outputs(detector, category, progress=False)
        assert out["labels"] == labels.tolist(), "the test images come in the order of the hold-out"
        row = {"checkpoint": checkpoint}
        for name, chosen in subsets.items():
            masks, maps = [out["masks"][i] for i in chosen], [out["maps"][i] for i in chosen]
            row[name] = {
                "images": len(chosen),
                "image_auroc": metrics.image_auroc(labels[chosen], np.array(out["scores"])[chosen]),
                "pixel_auroc": metrics.pixel_auroc(masks, maps),
                "aupro": metrics.aupro(masks, maps),
                "pixel_ap": metrics.pixel_ap(masks, maps),
            }
            print(f"{checkpoint} {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in row[name].items() if k != "images"))
        report["runs"].append(row)
    if args.figure:
        groups: dict[Path, list[tuple[float, Path]]] = {}
        for i in near:
            groups.setdefault(anomaly_match[i][1], []).append((anomaly_match[i][0], test[i]))
        figure(sorted(groups.items(), key=lambda kv: -len(kv[1]))[:4], args.figure)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""DAAD's granularity study: short runs over block sizes, reconstruction error and AUROC per size.

    python bench/granularity.py --data ../shared/data --category magnetic_tile \
        --scales 1,2,4,8,16 --out bench/results/granularity_mt [--set train.epochs=30 ...]
    python bench/granularity.py --plot-only --out bench/results/granularity_mt
    python bench/granularity.py --checkpoints runs/BENCH/magnetic_tile/*/seed*/model.ckpt --out DIR

Scale s sets the block size of memory level l to max(1, s // 2**l), so every level's blocks cover
about the same image area (s = 8 is the default (8, 4, 2)). For each scale it trains DAAD (the
settings given by --set, e.g. model.adversarial=false), then reports the mean per-pixel squared
reconstruction error of good and of defective test images, and image / pixel AUROC. Writes
granularity.json, granularity.md and granularity.png (the paper's central figure). With --checkpoints it trains
nothing: it scores DAAD checkpoints trained elsewhere (e.g. several seeds of a benchmark) and reports each block
scale's mean over its checkpoints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from defectmap import engine, training
from defectmap.config import build_config
from defectmap.data.dataset import ImageDataset
from defectmap.data.mvtec import open_category
from defectmap.models.daad import block_sizes


@torch.no_grad()
def mean_errors(detector: engine.Detector, samples) -> dict[str, float]:
    dataset = ImageDataset(samples, detector.config.data.image_size)
    errors = {0: [], 1: []}
    for batch in torch.utils.data.DataLoader(dataset, batch_size=32):
        images = batch["image"].to(detector.device)
        recon, _ = detector.model.reconstruct(images)
        per_image = (images - recon).pow(2).mean((1, 2, 3)).cpu()
        for label, value in zip(batch["label"].tolist(), per_image.tolist(), strict=True):
            errors[label].append(value)
    return {"error_good": float(np.mean(errors[0])), "error_defective": float(np.mean(errors[1]))}


FIGURES = ("error_good", "error_defective", "image_auroc", "pixel_auroc", "aupro")


def score(detector: engine.Detector) -> dict:
    """One row: the checkpoint's block scale, its mean errors on good and defective test images, and AUROC."""
    blocks = list(detector.config.model.block_sizes)
    category = open_category(detector.config.data)
    report = engine.evaluate(detector, category, progress=False)
    row = {"scale": blocks[0], "block_sizes": blocks, **mean_errors(detector, category.test)}
    row.update({k: report[k] for k in ("image_auroc", "pixel_auroc", "aupro")})
    print(json.dumps(row), flush=True)
    return row


def mean_per_scale(rows: list[dict]) -> list[dict]:
    """Several checkpoints per block layout (seeds) -> one row per layout with the mean of every figure."""
    groups: dict[tuple[int, ...], list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row["block_sizes"]), []).append(row)
    means = []
    for blocks, group in sorted(groups.items()):
        figures = {k: float(np.mean([r[k] for r in group])) for k in FIGURES}
        means.append({"scale": blocks[0], "block_sizes": list(blocks), "checkpoints": len(group), **figures})
    return means


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [r["scale"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(scales, [r["error_good"] for r in rows], "o-", label="good test images")
    ax1.plot(scales, [r["error_defective"] for r in rows], "s-", label="defective test images")
    ax1.set(xscale="log", xlabel="block scale s (level-0 block size)", ylabel="mean squared error")
    ax1.set_xticks(scales, [str(s) for s in scales])
    ax1.legend()
    ax2.plot(scales, [r["image_auroc"] for r in rows], "o-", label="image AUROC")
    ax2.plot(scales, [r["pixel_auroc"] for r in rows], "s-", label="pixel AUROC")
    ax2.set(xscale="log", xlabel="block scale s", ylabel="AUROC")
    ax2.set_xticks(scales, [str(s) for s in scales])
    ax2.legend()
    for ax in (ax1, ax2):
        ax.minorticks_off()  # a log axis past one decade labels its minor ticks too, over the scale labels
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows: list[dict]) -> str:
    lines = [
        "| scale s | block sizes | error good | error defective | ratio | image AUROC | pixel AUROC | AU-PRO |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scale']} | {tuple(r['block_sizes'])} | {r['error_good']:.5f} | {r['error_defective']:.5f} | "
            f"{r['error_defective'] / r['error_good']:.3f} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | "
            f"{r['aupro']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--category")
    parser.add_argument("--scales", default="1,2,4,8,16")
    parser.add_argument("--levels", type=int, default=3, help="number of memory levels")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--checkpoints", nargs="+", help="score these DAAD checkpoints instead of training")
    parser.add_argument("--plot-only", action="store_true", help="redraw from an existing granularity.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        rows = json.loads((out / "granularity.json").read_text())["rows"]
    elif args.checkpoints:
        scored = [{"checkpoint": path, **score(engine.load(path))} for path in args.checkpoints]
        rows = mean_per_scale(scored)
        (out / "granularity.json").write_text(json.dumps({"rows": rows, "checkpoints": scored}, indent=2))
    else:
        rows = []
        for scale in [int(s) for s in args.scales.split(",")]:
            blocks = list(block_sizes(scale, range(args.levels)))
            sets = [*args.set, f"model.block_sizes={blocks}"]
            cfg = build_config("daad", None, sets, root=args.data, category=args.category)
            rows.append(score(engine.load(training.fit(cfg, out / f"scale{scale}", progress=False))))
        rows.sort(key=lambda r: r["scale"])
        (out / "granularity.json").write_text(json.dumps({"sets": args.set, "rows": rows}, indent=2))
    (out / "granularity.md").write_text(table(rows) + "\n")
    print(table(rows))
    try:
        plot(rows, out / "granularity.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")


if __name__ == "__main__":
    main()

"""Large images with small defects: the AE trained on whole images resized to the input, against the AE trained and
scored on tiles of the original (`data.tile`), same input size (`--model` for another method).

The data is the demo's woven fabric at `--size` pixels (default 640), each defect painted inside one random 96-pixel
window, so a hole is 2-6 pixels across in the full image (about 0.5-1 pixel once the whole image is 128²). Written
to OUT/data, MVTec layout. Prints a table and writes OUT/tiles_MODEL.json (with every run's per-epoch history):

    python bench/tiles.py --out runs/tiles --seeds 3
    python bench/tiles.py --out runs/tiles --seeds 3 --model prn --whole-epochs 12 --tile-epochs 3 \
        --set data.texture_dir=../shared/data/dtd
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defectmap.benchmark import run_one  # noqa: E402
from defectmap.data.demo import write_demo_dataset  # noqa: E402

WINDOW = 96  # defects are painted at the scale of a window this large


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--size", type=int, default=640, help="image side in pixels")
    parser.add_argument("--input", type=int, default=128, help="model input (data.image_size) and tile size")
    parser.add_argument("--whole-epochs", type=int, default=60)
    parser.add_argument("--tile-epochs", type=int, default=6)
    parser.add_argument("--model", default="ae", help="method (default ae)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for both variants, e.g. data.texture_dir")
    args = parser.parse_args(argv)
    if not (args.out / "data" / "large_fabric" / "test").is_dir():
        write_demo_dataset(args.out / "data", category="large_fabric", size=args.size, n_train=80, n_test_good=20,
                           n_per_defect=10, defect_window=WINDOW)  # fmt: skip
    common = [f"data.image_size={args.input}", "train.patience=8", *args.set]
    variants = {
        "whole images": [*common, f"train.epochs={args.whole_epochs}"],
        f"{args.input}-pixel tiles": [*common, f"data.tile={args.input}", f"train.epochs={args.tile_epochs}"],
    }
    rows = []
    for name, sets in variants.items():
        for seed in range(args.seeds):
            run_dir = args.out / args.model / name.replace(" ", "_") / f"seed{seed}"
            report = run_one((name, args.model, None), args.out / "data", "large_fabric", seed, sets, run_dir)
            keys = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "good_rejected", "defects_missed")
            # A run trained outside the script (`defectmap train` + `test`, moved into run_dir) has no train_seconds.
            seconds = report.get("train_seconds")
            history = json.loads((run_dir / "history.json").read_text())  # per epoch: losses, each term's mean
            rows.append({"model": args.model, "variant": name, "seed": seed, "sets": sets,
                         "train_seconds": seconds, **{k: report[k] for k in keys},
                         "tiling": report.get("tiling"), "history": history})  # fmt: skip
            print(f"{name}, seed {seed}: " + ", ".join(f"{k} {rows[-1][k]:.3f}" for k in keys[:4])
                  + (f", {seconds:.0f} s" if seconds is not None else ""), flush=True)  # fmt: skip
    print("\n| model input | seeds | image AUROC | pixel AUROC | AU-PRO@0.3 | pixel AP | train s |")
    print("|---|---|---|---|---|---|---|")
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        cells = [f"{np.mean([r[k] for r in mine]):.3f} ± {np.std([r[k] for r in mine], ddof=1):.3f}"
                 for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")]  # fmt: skip
        timed = [r["train_seconds"] for r in mine if r["train_seconds"] is not None]
        seconds = f"{np.mean(timed):.0f}" if timed else "n/a"
        print(f"| {name} | {len(mine)} | " + " | ".join(cells) + f" | {seconds} |")
    summary = {"model": args.model, "size": args.size, "input": args.input, "runs": rows}
    (args.out / f"tiles_{args.model}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""How many good images does a line need? One method trained on N of a category's good training images
(`data.train_images`, a seeded draw; the validation images stay the same, unless --split-per-seed makes each seed
draw both) for each N in --counts, tested on the whole test split. Every N gets the optimizer steps that --epochs
epochs over all the training images take (epochs = --epochs x all / N), and early stopping waits the steps that
train.patience epochs over all of them take (train.patience_steps), so the table measures the images, not a shorter
schedule or a shorter patience. (The epochs are given, so a method's train.min_steps does not apply; PRN's would give
every N at least the 1020 steps of its defaults, close to this rule's 12 x 685 / N epochs on Magnetic Tile.)
Prints a table and writes OUT/good_images_MODEL.json (with every run's per-epoch history):

    python bench/good_images.py --data ../shared/data --category magnetic_tile --model prn \
        --counts 25,50,100,200,400,0 --seeds 2 --out runs/good_images --set data.image_size=128 \
        --set data.texture_dir=../shared/data/dtd
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defectmap.benchmark import run_one, summarise  # noqa: E402
from defectmap.checkpoint import load_checkpoint  # noqa: E402
from defectmap.config import build_config  # noqa: E402
from defectmap.data.mvtec import open_category  # noqa: E402
from defectmap.stopping import steps_per_epoch  # noqa: E402

KEYS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "good_rejected", "defects_missed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--category", required=True)
    parser.add_argument("--model", default="prn", help="method (default prn)")
    parser.add_argument("--counts", default="25,50,100,200,400,0", help="good training images per run (0: all)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs over all training images")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run, e.g. data.image_size=128")
    parser.add_argument("--split-per-seed", action="store_true", help="each seed draws the images (data.split_seed)")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    cfg = build_config(args.model, None, args.set, root=str(args.data), category=args.category)
    available = len(open_category(cfg.data).train)  # after the validation images are held out
    if max(counts) > available:
        parser.error(f"--counts asks for {max(counts)} good training images; {args.category} has {available}")
    # Patience as the steps it spans over all the images, unless --set gives train.patience_steps.
    wait = cfg.train.patience_steps or cfg.train.patience * steps_per_epoch(available, cfg.train.batch_size)
    rows, reports = [], []
    for seed, count in ((seed, count) for seed in range(args.seeds) for count in counts):  # a whole curve per seed
        images = count or available
        epochs = max(1, round(args.epochs * available / images))
        sets = [*args.set, f"data.train_images={count}", f"train.epochs={epochs}", f"train.patience_steps={wait}"]
        run_dir = args.out / args.model / f"images{images}" / f"seed{seed}"
        label = (f"{images} images", args.model, None)
        report = run_one(label, args.data, args.category, seed, sets, run_dir, split_per_seed=args.split_per_seed)
        reports.append(report)
        history = json.loads((run_dir / "history.json").read_text())
        # The train settings the run had (a run finished before is read back, not trained again with --set).
        trained = load_checkpoint(run_dir / "model.ckpt")["config"]["train"]
        rows.append({"images": images, "seed": seed, "epochs": epochs, "epochs_run": len(history), "sets": sets,
                     "train_config": trained,
                     "train_seconds": report.get("train_seconds"), **{k: report.get(k) for k in KEYS},
                     "history": history})  # fmt: skip
        print(f"{images} images, seed {seed}: " + ", ".join(f"{k} {rows[-1][k]:.3f}" for k in KEYS[:4])
              + f", {len(history)} of {epochs} epochs", flush=True)  # fmt: skip
    print(
        "\n| good training images | seeds | epochs | image AUROC | pixel AUROC | AU-PRO@0.3 | pixel AP "
        "| good rejected |"
    )
    print("|---|---|---|---|---|---|---|---|")
    means = {row["model"]: row for row in summarise(reports)}  # mean and std over seeds, as `benchmark` reports
    for count in counts:
        mine = [r for r in rows if r["images"] == (count or available)]
        row = means[f"{mine[0]['images']} images"]
        cells = [f"{row[k]:.3f} ± {row[k + '_std']:.3f}" for k in KEYS[:4]]
        rejected = ", ".join(str(r["good_rejected"]) for r in mine)
        print(f"| {mine[0]['images']} | {len(mine)} | {mine[0]['epochs']} | " + " | ".join(cells) + f" | {rejected} |")
    summary = {"model": args.model, "category": args.category, "available": available, "epochs_at_all": args.epochs,
               "split_per_seed": args.split_per_seed, "runs": rows}  # fmt: skip
    (args.out / f"good_images_{args.model}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""CPU cost of the items a model that learns from anomalies trains on: synthesis per item, one thread.

    python bench/synthesis_cost.py --data ../shared/data --category magnetic_tile [--items 120] [--set KEY=VALUE ...] \
        [--out bench/results/synthesis_cost_prn256.json]
    python bench/synthesis_cost.py ... --model pmb --set model.denoise_share=0.5   # a reconstruction model's denoising

PRN (the default `--model`) and any reconstruction model with `model.denoise_share` above 0.

Builds the fit set exactly as `defectmap train` does (decoded images cached first, as in training) and times
`--items` of its items on one thread: what the training process spends between GPU steps with the default
`data.num_workers=0`. The backbone is random-init (its weights do not change the cost).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from defectmap import training
from defectmap.config import build_config
from defectmap.data.mvtec import open_category
from defectmap.engine import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--model", default="prn")
    parser.add_argument("--items", type=int, default=120)
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--out", help="also write the row to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    random_init = ["model.pretrained=false"] if args.model == "prn" else []  # the reconstruction models load none
    cfg = build_config(args.model, None, [*random_init, *args.set], root=args.data, category=args.category)
    category = open_category(cfg.data)
    train_set, val_set = training._loaded_datasets(cfg, category, progress=False)
    for i in range(len(train_set)):  # decode and cache, as training does before its first epoch
        train_set[i]
    fit_set, _ = training._training_sets(cfg, category, build_model(cfg), train_set, val_set)
    if fit_set is train_set:
        sys.exit(f"{args.model} as configured trains on normal images only: nothing is synthesised")
    items = min(args.items, len(fit_set))
    start = time.perf_counter()
    for i in range(items):
        fit_set[i]
    per_item = (time.perf_counter() - start) / items
    row = {"model": args.model, "image_size": cfg.data.image_size, "fit_items": len(fit_set), "timed_items": items,
           "ms_per_item": per_item * 1000, "seconds_per_epoch": per_item * len(fit_set)}  # fmt: skip
    print(json.dumps(row))
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()

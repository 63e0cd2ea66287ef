"""Train and test one model over several seeds on one category; print mean ± std and write JSON.

    python bench/seeds.py --model ae --data ../shared/data --category magnetic_tile \
        --seeds 0,1,2 --out runs/mt_ae [--set data.image_size=128 ...]

Each seed trains with `train.seed=S` (weights, order of batches) and evaluates on the full test
split; the validation split is the same for all seeds (`data.split_seed`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from defectmap import engine
from defectmap.config import build_config
from defectmap.data.mvtec import open_category
from defectmap.outputs import METRIC_NAMES, write_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    out = Path(args.out)
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = build_config(args.model, None, [*args.set, f"train.seed={seed}"], root=args.data, category=args.category)
        start = time.perf_counter()
        checkpoint = engine.fit(cfg, out / f"seed{seed}", progress=False)
        train_s = time.perf_counter() - start
        detector = engine.load(checkpoint)
        report = engine.evaluate(detector, open_category(detector.config.data), progress=False)
        report.update(seed=seed, train_seconds=train_s, epochs_run=len(detector.info["history"]))
        write_metrics(report, out / f"seed{seed}")
        runs.append(report)
        print(
            f"seed {seed}: "
            + "  ".join(f"{m} {report[m]:.4f}" for m in METRIC_NAMES if report[m] is not None)
            + f"  ({train_s:.0f}s, {report['epochs_run']} epochs)",
            flush=True,
        )
    summary = {
        "model": args.model,
        "category": args.category,
        "sets": args.set,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "runs": runs,
    }
    for metric in METRIC_NAMES:
        values = [r[metric] for r in runs if r[metric] is not None]
        if values:
            spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0  # sample std over seeds
            summary[metric] = {"mean": float(np.mean(values)), "std": spread}
    print(" | ".join(f"{m} {summary[m]['mean']:.4f} ± {summary[m]['std']:.4f}" for m in METRIC_NAMES if m in summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""Inference cost of `model.error=features` against the squared error, same weights, same process.

    python bench/feature_error_speed.py [--size 128] [--out bench/results/feature_error_speed_cpu.json]

For each reconstruction model (default settings, random-init weights; the feature backbone's weights do not change
the cost), the model call on a random batch of 32 and on one image is timed with `model.error` l2 and features,
one after the other, the median of `--repeats` calls each (`bench/speed.py`'s `timed`).
"""

import argparse
import json
from pathlib import Path

import torch
from speed import timed  # bench/ is the script's folder, so on sys.path

from defectmap.config import resolve_config
from defectmap.engine import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/results/feature_error_speed_cpu.json")
    args = parser.parse_args()
    rows = []
    for method in ("ae", "daad", "pmb"):
        models = {}
        for error in ("l2", "features"):
            torch.manual_seed(0)
            cfg = resolve_config({"data": {"image_size": args.size}, "model": {"error": error}}, method)
            models[error] = build_model(cfg).eval()
        row = {"model": method, "size": args.size}
        for batch in (32, 1):
            images = torch.rand(batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
            for error, model in models.items():
                with torch.no_grad():
                    seconds = timed(lambda m=model, x=images: m(x), args.repeats, torch.device("cpu"))
                row[f"img_s_batch{batch}_{error}"] = round(batch / seconds, 1)
        row["batch32_cost_ratio"] = round(row["img_s_batch32_l2"] / row["img_s_batch32_features"], 2)
        rows.append(row)
        print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Score checkpoints on another few-shot hold-out: the same weights, other real anomalies left out of test.

    python bench/holdout.py RUN/model.ckpt [...] --set data.anomaly_sampling=per_type [--out bench/results/holdout.json]

For comparing a model trained without real anomalies (k = 0) with a few-shot one (k = 10) whose
anomalies were drawn differently: the overrides name the hold-out (`data.anomalies`, `data.anomaly_seed`,
`data.anomaly_sampling`, `data.near_copy_similarity`), and the k = 0 weights do not depend on it (with
`model.real_share=0` the drawn anomalies are never read in training), so only the evaluated test set changes.
Other keys are refused: they would change the model or its input, not the hold-out.
"""

import argparse
import json
from pathlib import Path

from defectmap import engine
from defectmap.config import apply_overrides, parse_sets
from defectmap.data.mvtec import CategoryData, open_category
from defectmap.outputs import METRIC_NAMES

HOLD_OUT_KEYS = {"anomalies", "anomaly_seed", "anomaly_sampling", "near_copy_similarity"}


def hold_out_overrides(parser: argparse.ArgumentParser, sets: list[str]) -> dict:
    """The `--set` overrides as a nested dict; anything but a hold-out key is a usage error."""
    overrides = parse_sets(sets)
    if set(overrides) - {"data"} or set(overrides.get("data", {})) - HOLD_OUT_KEYS:
        parser.error(f"only data.{{{','.join(sorted(HOLD_OUT_KEYS))}}} overrides name a hold-out")
    return overrides


def on_hold_out(checkpoint: str, overrides: dict) -> tuple[engine.Detector, CategoryData]:
    """A checkpoint and the category it is evaluated on, with the hold-out the overrides name."""
    detector = engine.load(checkpoint)
    apply_overrides(detector.config, overrides)
    return detector, open_category(detector.config.data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE")
    parser.add_argument("--out", default="bench/results/holdout.json")
    args = parser.parse_args()
    overrides = hold_out_overrides(parser, args.set)
    rows = []
    for checkpoint in args.checkpoints:
        report = engine.evaluate(*on_hold_out(checkpoint, overrides), progress=False)
        row = {"checkpoint": checkpoint, **{m: report[m] for m in METRIC_NAMES}}
        rows.append({**row, "training_anomalies": report["training_anomalies"]})
        print(f"{checkpoint}: " + "  ".join(f"{m} {row[m]:.4f}" for m in METRIC_NAMES))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

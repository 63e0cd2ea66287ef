"""Does Histogram Error Estimation help? Evaluate trained checkpoints with HEE off and on.

    python bench/hee.py RUN/model.ckpt [RUN2/model.ckpt ...] [--out bench/results/hee.json]

HEE has no parameters, so the same weights are evaluated twice; with HEE on, the normalisation and
threshold are re-calibrated on the good validation images (never the test split).
"""

import argparse
import json
from pathlib import Path

from defectmap import engine
from defectmap.calibration import recalibrate
from defectmap.config import apply_overrides
from defectmap.data.mvtec import open_category
from defectmap.outputs import METRIC_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--out", default="bench/results/hee.json")
    args = parser.parse_args()
    rows = []
    for checkpoint in args.checkpoints:
        base = engine.load(checkpoint)
        for hee in (False, True):
            cfg = base.config
            apply_overrides(cfg, {"postprocess": {"hee": hee}})
            model = engine.build_model(cfg)
            model.load_state_dict(base.model.state_dict())
            detector = engine.Detector(model.to(base.device).eval(), cfg, base.calibration, base.device, base.info)
            detector.calibration = recalibrate(detector, cfg.train.false_reject_rate)
            report = engine.evaluate(detector, open_category(cfg.data), progress=False)
            row = {"checkpoint": checkpoint, "method": cfg.method, "hee": hee, **{m: report[m] for m in METRIC_NAMES}}
            rows.append(row)
            print(f"{checkpoint} {cfg.method} hee={hee}: " + "  ".join(f"{m} {row[m]:.4f}" for m in METRIC_NAMES))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Error-map post-processing variants on trained reconstruction checkpoints (AE, DAAD, PMB).

    python bench/postprocess.py RUN/model.ckpt [RUN2/model.ckpt ...] [--variants none,hee,normalize,normalize+hee]
        [--out bench/results/postprocess.json]

The same weights are evaluated once per variant: `none` (plain error map), `hee` (Histogram Error
Estimation), `normalize` (the difference divided by the validation normals' mean difference at each
position) and `normalize+hee`. Each variant re-runs the calibration `train` ends with on the good
validation images (the model's own calibration, then thresholds); no test image is involved. Runs
of one benchmark folder (`.../<model>/seed<S>/model.ckpt`) are summarised as mean ± std over seeds.
"""

import argparse
import copy
import json
from pathlib import Path

from defectmap import engine
from defectmap.benchmark import markdown, summarise
from defectmap.config import apply_overrides
from defectmap.data.dataset import ImageDataset
from defectmap.data.mvtec import CategoryData, open_category
from defectmap.outputs import METRIC_NAMES
from defectmap.training import calibrate_trained

VARIANTS = {
    "none": {"hee": False, "normalize": False},
    "hee": {"hee": True, "normalize": False},
    "normalize": {"hee": False, "normalize": True},
    "normalize+hee": {"hee": True, "normalize": True},
}


def with_postprocess(base: engine.Detector, post: dict, category: CategoryData) -> engine.Detector:
    """`base`'s weights under other error-map settings, calibrated on validation normals as `train` ends."""
    cfg = copy.deepcopy(base.config)  # calibration writes the values it chooses into the config
    apply_overrides(cfg, {"postprocess": post})
    model = engine.build_model(cfg).to(base.device)
    # The expected-difference buffer is fitted by the calibration; every other weight must match.
    missing, unexpected = model.load_state_dict(base.model.state_dict(), strict=False)
    if unexpected or set(missing) - {"error_filter.expected"}:
        raise SystemExit(f"{cfg.method} checkpoint: weights do not match ({missing + unexpected})")
    data = cfg.data
    val_set = ImageDataset(category.val, data.image_size, cache=True, max_pixels=data.max_pixels)
    calibration = calibrate_trained(cfg, model, val_set, base.device)
    return engine.Detector(model.eval(), cfg, calibration, base.device, base.info)


def run_label(checkpoint: str) -> str:
    """The benchmark's model or variant name for `.../<label>/seed<S>/model.ckpt`, else the run folder."""
    folder = Path(checkpoint).parent
    return folder.parent.name if folder.name.startswith("seed") else folder.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--out", default="bench/results/postprocess.json")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; use {', '.join(VARIANTS)}")
    rows = []
    for checkpoint in args.checkpoints:
        base = engine.load(checkpoint)
        if not hasattr(base.model, "error_filter"):
            raise SystemExit(f"{checkpoint}: {base.config.method} is not a reconstruction model")
        category = open_category(base.config.data)
        for name in variants:
            detector = with_postprocess(base, VARIANTS[name], category)
            cfg = detector.config
            report = engine.evaluate(detector, category, progress=False)
            row = {"checkpoint": checkpoint, "category": cfg.data.category, "method": cfg.method,
                   "variant": f"{run_label(checkpoint)} + {name}", **VARIANTS[name]}  # fmt: skip
            row.update({m: report[m] for m in METRIC_NAMES})
            row["latent_weight"] = getattr(cfg.model, "latent_weight", None)
            rows.append(row)
            print(f"{checkpoint} {cfg.method} {name}: " + "  ".join(f"{m} {row[m]:.4f}" for m in METRIC_NAMES))
    summary = summarise(rows)
    print(markdown(summary))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": summary, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()

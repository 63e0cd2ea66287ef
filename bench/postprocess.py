"""Error-map variants on trained reconstruction checkpoints (AE, DAAD, PMB).

    python bench/postprocess.py RUN/model.ckpt [RUN2/model.ckpt ...] [--variants none,hee,normalize,normalize+hee]
        [--set model.feature_levels=[1,2] ...] [--out bench/results/postprocess.json]

The same weights are evaluated once per variant: `none` (the squared-error map), or steps joined by `+`:
`ssim` (1 - SSIM of the reconstruction instead of the squared error, `model.error=ssim`), `features` (the
distance of frozen ImageNet features, `model.error=features`, with the checkpoint's `model.feature_*` settings
and the backbone's ImageNet weights loaded as `train` would), `normalize` (the
difference divided by the validation normals' mean difference at each position) and `hee` (Histogram Error
Estimation), e.g. `ssim+normalize+hee`; or `choose` (`postprocess.choose=synthetic`: normalize and hee as the
synthetic validation anomalies pick them), e.g. `ssim+choose`. Each variant re-runs the calibration `train`
ends with on the good validation images (the model's own calibration, then thresholds); no test image is
involved. `--set` overrides apply to every variant (scoring settings only, such as `model.feature_levels`; the
weights must still fit) and are recorded in the output. Runs of one benchmark folder (`.../<model>/seed<S>/model.ckpt`)
are summarised as mean ± std over seeds.
"""

import argparse
import copy
import json
from pathlib import Path

from defectmap import engine
from defectmap.benchmark import markdown, summarise
from defectmap.config import apply_overrides, parse_sets
from defectmap.data.dataset import ImageDataset
from defectmap.data.mvtec import CategoryData, open_category
from defectmap.outputs import METRIC_NAMES
from defectmap.training import calibrate_trained

STEPS = ("ssim", "features", "normalize", "hee", "choose")
ERRORS = ("ssim", "features")  # steps that replace the squared error
DEFAULT_VARIANTS = "none,hee,normalize,normalize+hee"


def variant(name: str) -> dict:
    """The config overrides of a variant name: `none` or steps of STEPS joined by `+`; ValueError otherwise."""
    steps = [] if name == "none" else name.split("+")
    if not set(steps) <= set(STEPS) or len(set(steps)) != len(steps):
        raise ValueError(f"unknown variant '{name}'; use none or steps of {', '.join(STEPS)} joined by +")
    if "choose" in steps and {"normalize", "hee"} & set(steps):
        raise ValueError(f"variant '{name}': choose sets normalize and hee itself; drop them")
    errors = [step for step in steps if step in ERRORS]
    if len(errors) > 1:
        raise ValueError(f"variant '{name}': one error kind at most, of {', '.join(ERRORS)}")
    return {"model": {"error": errors[0] if errors else "l2"},
            "postprocess": {"hee": "hee" in steps, "normalize": "normalize" in steps,
                            "choose": "synthetic" if "choose" in steps else "manual"}}  # fmt: skip


def parse_variants(text: str, parser: argparse.ArgumentParser) -> dict[str, dict]:
    """{name: overrides} for a comma-separated `--variants` value; a bad name is a one-line parser error."""
    try:
        return {name: variant(name) for name in text.split(",")}
    except ValueError as exc:
        parser.error(str(exc))


def with_postprocess(base: engine.Detector, category: CategoryData, *overrides: dict) -> engine.Detector:
    """`base`'s weights under other error-map settings (`variant`'s overrides, then any others, in order),
    calibrated on validation normals as `train` ends."""
    cfg = copy.deepcopy(base.config)  # calibration writes the values it chooses into the config
    for values in overrides:
        apply_overrides(cfg, values)
    model = engine.build_model(cfg)
    # The expected-difference buffer is fitted by the calibration; a feature error the checkpoint was not scored
    # with gets its ImageNet backbone as `train` would load it, and one it was scored with is dropped by a variant
    # without it. Every other weight must match.
    missing, unexpected = model.load_state_dict(base.model.state_dict(), strict=False)
    if any(key.startswith("error.backbone.") for key in missing):
        model.load_weights()
    missing, unexpected = ([k for k in keys if not k.startswith("error.backbone.")] for keys in (missing, unexpected))
    model.to(base.device)
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
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, each none or steps of "
                        f"{', '.join(STEPS)} joined by +")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every variant")
    parser.add_argument("--out", default="bench/results/postprocess.json")
    args = parser.parse_args()
    variants = parse_variants(args.variants, parser)
    sets = parse_sets(args.set)
    rows = []
    for checkpoint in args.checkpoints:
        base = engine.load(checkpoint)
        if not hasattr(base.model, "error_filter"):
            raise SystemExit(f"{checkpoint}: {base.config.method} is not a reconstruction model")
        category = open_category(base.config.data)
        for name, overrides in variants.items():
            detector = with_postprocess(base, category, overrides, sets)
            cfg = detector.config
            report = engine.evaluate(detector, category, progress=False)
            row = {"checkpoint": checkpoint, "category": cfg.data.category, "method": cfg.method,
                   "variant": f"{run_label(checkpoint)} + {name}"}  # fmt: skip
            post = cfg.postprocess  # with choose, the steps it chose
            row.update({"error": cfg.model.error, "hee": post.hee, "normalize": post.normalize, "choose": post.choose})
            row.update({m: report[m] for m in METRIC_NAMES})
            row["latent_weight"] = getattr(cfg.model, "latent_weight", None)
            rows.append(row)
            print(f"{checkpoint} {cfg.method} {name}: " + "  ".join(f"{m} {row[m]:.4f}" for m in METRIC_NAMES))
    summary = summarise(rows)
    print(markdown(summary))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": summary, "runs": rows, "sets": args.set}, indent=2))


if __name__ == "__main__":
    main()

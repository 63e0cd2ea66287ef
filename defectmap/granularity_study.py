"""DAAD's granularity study (`defectmap granularity`): the paper's central figure on your own data.

For each block scale s (memory level l gets b x b blocks with b = max(1, s // 2**l), so every level's blocks
cover about the same image area; s = 8 is the default (8, 4, 2)) and each seed, DAAD is trained as configured
(`--config`, `--set`, e.g. model.adversarial=false) and tested. Each run also records the mean per-pixel squared
reconstruction error of the good and of the defective test images, at the model's input size, with no smoothing
or post-processing. The study writes, per scale, the mean over seeds of those errors and of image AUROC, pixel
AUROC and AU-PRO (sample std with several seeds): granularity.json, granularity.md and, with matplotlib,
granularity.png (errors on the left, AUROC on the right).

This is a study, not model selection: it reads the test split, so nothing it reports may pick a model's
settings for an evaluation on the same test images (`model.granularity=auto` chooses on synthetic anomalies).

Runs live in OUT/scale<S>/seed<N>/ and are resumed or skipped like a benchmark's; the tables are rewritten after
every run, so a stopped study keeps what finished. With `checkpoints` it trains nothing and scores DAAD
checkpoints trained elsewhere (e.g. the seeds of a benchmark), one row per block layout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from defectmap import engine
from defectmap.benchmark import run_one
from defectmap.checkpoint import atomic_write, load_checkpoint
from defectmap.config import build_config, load_preset
from defectmap.data.mvtec import open_category
from defectmap.data.tiles import dataset_as_trained
from defectmap.errors import ConfigError, DataError
from defectmap.models.daad import block_sizes
from defectmap.progress import bars_off

FIGURES = ("error_good", "error_defective", "image_auroc", "pixel_auroc", "aupro")
ERRORS_FILE = "reconstruction_errors.json"


@torch.no_grad()
def reconstruction_errors(detector: engine.Detector, samples) -> dict[str, float]:
    """Mean per-pixel squared reconstruction error of the good (label 0) and defective (label 1) samples."""
    cfg = detector.config
    dataset = dataset_as_trained(samples, cfg.data, cache=False)  # data.tile: tiles, defective if they hold defects
    errors: dict[int, list[float]] = {0: [], 1: []}
    detector.model.eval()
    for batch in torch.utils.data.DataLoader(dataset, batch_size=cfg.train.eval_batch_size):
        images = batch["image"].to(detector.device)
        recon, _ = detector.model.reconstruct(images)
        for label, value in zip(batch["label"].tolist(), (images - recon).pow(2).mean((1, 2, 3)).tolist(), strict=True):
            errors[label].append(value)
    if not errors[0] or not errors[1]:
        raise DataError("the granularity study needs good and defective test images; the test split lacks one")
    return {"error_good": float(np.mean(errors[0])), "error_defective": float(np.mean(errors[1]))}


def score_checkpoint(path: str | Path, report: dict | None = None) -> dict:
    """One run's row: its block sizes, reconstruction errors and AUROCs (`report`: its test metrics, if known)."""
    detector = engine.load(path)
    category = engine.test_split(detector)
    if report is None:
        report = engine.evaluate(detector, category, progress=False)
    blocks = list(detector.config.model.block_sizes)
    row = {"scale": blocks[0], "block_sizes": blocks, **reconstruction_errors(detector, category.test)}
    return row | {k: report[k] for k in ("image_auroc", "pixel_auroc", "aupro")}


def mean_per_scale(runs: list[dict]) -> list[dict]:
    """Runs (seeds, checkpoints) -> one row per block layout: mean and sample std of every figure."""
    groups: dict[tuple[int, ...], list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(run["block_sizes"]), []).append(run)
    rows = []
    for blocks, group in sorted(groups.items()):
        row = {"scale": blocks[0], "block_sizes": list(blocks), "runs": len(group)}
        for name in FIGURES:
            values = [r[name] for r in group]
            row[name] = float(np.mean(values))
            row[f"{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    def auroc(row: dict, name: str) -> str:
        return f"{row[name]:.4f}" + (f" ± {row[name + '_std']:.4f}" if row["runs"] > 1 else "")

    lines = [
        "| scale s | block sizes | runs | error good | error defective | ratio | image AUROC | pixel AUROC | AU-PRO |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scale']} | {tuple(r['block_sizes'])} | {r['runs']} | {r['error_good']:.5f} | "
            f"{r['error_defective']:.5f} | {r['error_defective'] / r['error_good']:.3f} | {auroc(r, 'image_auroc')} | "
            f"{auroc(r, 'pixel_auroc')} | {auroc(r, 'aupro')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    """granularity.png; False (and nothing written) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [r["scale"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, names, ylabel in (
        (ax1, {"error_good": "good test images", "error_defective": "defective test images"}, "mean squared error"),
        (ax2, {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC"}, "AUROC"),
    ):
        for (name, label), marker in zip(names.items(), ("o-", "s-"), strict=True):
            ax.errorbar(scales, [r[name] for r in rows], yerr=[r[f"{name}_std"] for r in rows], fmt=marker,
                        capsize=3, label=label)  # fmt: skip
        ax.set(xscale="log", xlabel="block scale s (level-0 block size)", ylabel=ylabel)
        ax.set_xticks(scales, [str(s) for s in scales])
        ax.minorticks_off()  # a log axis past one decade labels its minor ticks too, over the scale labels
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return True


def write_study(runs: list[dict], out: Path, extra: dict) -> list[dict]:
    """granularity.json (per-scale rows, every run, `extra`) and granularity.md; returns the rows."""
    rows = mean_per_scale(runs)
    record = json.dumps({**extra, "rows": rows, "runs": runs}, indent=2)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "granularity.json", lambda tmp: tmp.write_text(record))
    atomic_write(out / "granularity.md", lambda tmp: tmp.write_text(table(rows) + "\n"))
    return rows


def parse_scales(text: str) -> list[int]:
    """`--scales 16,4,8` -> [4, 8, 16]; run_study checks that they are from 1."""
    try:
        return sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise ConfigError(f"--scales must be whole numbers joined by commas, e.g. 1,2,4,8,16; got '{text}'") from None


def run_study(root: str, category: str, out: str | Path, scales: list[int], seeds: int = 1,
              preset: str | None = None, sets: Sequence[str] = (), progress: bool = True) -> list[dict]:  # fmt: skip
    """Train and score DAAD at every block scale and seed; returns the per-scale rows (see the module doc)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if not scales or min(scales) < 1:
        raise ConfigError(f"the block scales must be one or more whole numbers from 1, got {list(scales)}")
    named = load_preset(preset).get("method", "daad") if preset else "daad"
    if named != "daad":
        raise ConfigError(f"the preset {preset} is for {named}; the granularity study trains daad")
    out, method = Path(out), "daad"
    base = build_config(method, preset, list(sets), root=root, category=category)
    plan = []
    for scale in scales:
        scale_sets = [*sets, f"model.block_sizes={list(block_sizes(scale, base.model.memory_levels))}",
                      "model.granularity=manual"]  # fmt: skip
        build_config(method, preset, scale_sets, root=root, category=category)  # the input size fits the blocks
        plan.append((scale, scale_sets))
    open_category(base.data)  # a missing or empty dataset is one line before any folder is made
    extra = {"data": root, "category": category, "preset": preset, "sets": list(sets), "seeds": seeds}
    runs = []
    grid = [(seed, scale, scale_sets) for seed in range(seeds) for scale, scale_sets in plan]  # seed-major
    for seed, scale, scale_sets in tqdm(grid, desc="granularity study", disable=bars_off(progress)):
        run_dir = out / f"scale{scale}" / f"seed{seed}"
        spec = (f"scale{scale}", method, preset)
        report = run_one(spec, Path(root), category, seed, scale_sets, run_dir, progress)
        cached = run_dir / ERRORS_FILE
        if cached.is_file():
            row = json.loads(cached.read_text())
        else:
            row = score_checkpoint(run_dir / "model.ckpt", report)
            atomic_write(cached, lambda tmp, row=row: tmp.write_text(json.dumps(row, indent=2)))
        runs.append({**row, "seed": seed, "run": str(run_dir)})
        rows = write_study(runs, out, extra)
    return rows


def score_checkpoints(paths: list[str], out: str | Path, progress: bool = True) -> list[dict]:
    """Score DAAD checkpoints trained elsewhere (no training): one row per block layout."""
    for path in paths:  # every one is checked before any is scored
        method = load_checkpoint(path)["config"]["method"]
        if method != "daad":
            raise ConfigError(f"{path} is a checkpoint of {method}; the granularity study scores daad checkpoints")
    runs = []
    for path in tqdm(paths, desc="granularity checkpoints", disable=bars_off(progress)):
        runs.append({**score_checkpoint(path), "checkpoint": str(path)})
    return write_study(runs, Path(out), {"checkpoints": [str(p) for p in paths]})


def finish(rows: list[dict], out: str | Path) -> None:
    """Print the table and draw the plot (a note on stderr when matplotlib is missing)."""
    print(table(rows))
    if plot(rows, Path(out) / "granularity.png"):
        print(f"wrote {Path(out) / 'granularity.json'}, granularity.md and granularity.png")
    else:
        print(f"wrote {Path(out) / 'granularity.json'} and granularity.md")
        print("matplotlib is not installed, so no granularity.png: pip install matplotlib", file=sys.stderr)

"""The benchmark grid: models x categories x seeds, resumable, summarised as CSV, JSON and Markdown.

Each run lives in OUT/<category>/<model>/seed<S>/ and is finished once its metrics.json exists; a
re-run skips finished runs and continues interrupted ones from their last.ckpt. Means and sample
standard deviations are over seeds.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from defectmap import comparison, engine, training
from defectmap.checkpoint import atomic_write, versions
from defectmap.config import build_config, load_preset
from defectmap.data.mvtec import category_folders
from defectmap.errors import ConfigError, DataError
from defectmap.outputs import METRIC_NAMES, write_metrics
from defectmap.progress import bars_off
from defectmap.resume import load_training_state

COLUMNS = (*METRIC_NAMES, "train_seconds", "inference_images_per_s")


def list_categories(root: Path, categories: str) -> list[str]:
    if categories != "all":
        return [c.strip() for c in categories.split(",") if c.strip()]
    found = category_folders(root)
    if not found:
        raise DataError(f"no category folders with train/ under {root}; name them with --categories")
    return found


def parse_models(text: str) -> list[tuple[str, str | None, str | None]]:
    """`--models ae,daad,bench/ablations/memae.yaml` -> (label, method, preset) per entry.

    A model name runs that method with its defaults; a YAML preset (a path ending in .yaml or .yml, with
    `method:` and any data/train/model values) runs a variant labelled by the file's stem, so an ablation
    is one benchmark call.
    """
    from defectmap.models import MODELS

    specs = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        if entry.endswith((".yaml", ".yml")):
            values = load_preset(entry)  # one-line error when missing or malformed
            if values.get("method") not in MODELS:
                raise ConfigError(f"preset {entry} must name its model with method: one of {', '.join(MODELS)}")
            specs.append((Path(entry).stem, None, entry))
        elif entry in MODELS:
            specs.append((entry, entry, None))
        else:
            raise ConfigError(f"unknown model '{entry}'; give one of {', '.join(MODELS)} or a .yaml preset path")
    labels = [label for label, _, _ in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two --models entries share a label ({', '.join(labels)}); rename a preset file")
    return specs


def run_one(spec: tuple[str, str | None, str | None], root: Path, category: str, seed: int, sets: list[str],
            run_dir: Path, progress: bool = False, split_per_seed: bool = False) -> dict:  # fmt: skip
    """Train and test one run (or read its metrics.json when it finished before). With `progress`, the run's own
    epoch bar and per-epoch losses show under the grid's bar, then one line says what it scored. With
    `split_per_seed` the seed also draws the validation images (data.split_seed)."""
    label, method, preset = spec
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        # The folder names the run: one trained outside the benchmark (`defectmap train` + `test`, then moved
        # here) has no variant or seed of its own.
        if progress:
            tqdm.write(f"{category} / {label} / seed {seed}: finished earlier, read from its metrics.json")
        return {**json.loads(metrics_path.read_text()), "variant": label, "seed": seed}
    # The seed also draws the few-shot anomalies (data.anomalies > 0), and with split_per_seed the validation
    # images, unless --set names another.
    drawn = [f"data.anomaly_seed={seed}"] + ([f"data.split_seed={seed}"] if split_per_seed else [])
    sets = [*drawn, *sets, f"train.seed={seed}"]
    cfg = build_config(method, preset, sets, root=str(root), category=category)
    # An interrupted run continues from its last.ckpt (with the config saved there, like finished runs);
    # its training time counts the seconds trained before the interruption.
    last = run_dir / "last.ckpt"
    before = float(load_training_state(last)["state"]["seconds"]) if last.is_file() else 0.0
    start = time.perf_counter()
    checkpoint = training.fit(cfg, run_dir, progress=progress, resume=last.is_file())
    train_seconds = before + time.perf_counter() - start
    detector = engine.load(checkpoint)
    report = engine.evaluate(detector, engine.test_split(detector), progress=progress)
    report.update(variant=label, seed=seed, train_seconds=train_seconds, epochs_run=len(detector.info["history"]))
    write_metrics(report, run_dir)
    if progress:
        scores = ", ".join(f"{name} {report[name]:.3f}" for name in METRIC_NAMES[:3] if report.get(name) is not None)
        tqdm.write(f"{category} / {label} / seed {seed}: {scores} ({train_seconds:.0f} s training)")
    return report


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (category, model or variant): mean and std over seeds of every column."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["category"], run["variant"]), []).append(run)
    rows = []
    for (category, model), members in groups.items():
        row = {"category": category, "model": model, "seeds": len(members)}
        for column in COLUMNS:
            values = [m[column] for m in members if m.get(column) is not None]
            row[column] = float(np.mean(values)) if values else None
            row[f"{column}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown(rows: list[dict], comparisons: list[dict] = ()) -> str:
    """Per category the table of means ± std over seeds, then every later model against the first."""

    def cell(row: dict, column: str) -> str:
        if row[column] is None:
            return "n/a"
        if column == "train_seconds":
            return f"{row[column]:.0f} ± {row[column + '_std']:.0f}"
        if column == "inference_images_per_s":
            return f"{row[column]:.1f}"
        return f"{row[column]:.3f} ± {row[column + '_std']:.3f}"

    header = ["model", "seeds", "image AUROC", "pixel AUROC", "AU-PRO@0.3", "pixel AP", "F1-max (oracle)",
              "train s", "inference img/s"]  # fmt: skip
    lines = []
    for category in sorted({r["category"] for r in rows}):
        lines += [f"### {category}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in (r for r in rows if r["category"] == category):
            lines.append("| " + " | ".join([row["model"], str(row["seeds"])] + [cell(row, c) for c in COLUMNS]) + " |")
        lines.append("")
        lines += comparison.markdown(comparisons, category)
    return "\n".join(lines)


def write_tables(runs: list[dict], out_path: Path, call: dict) -> list[dict]:
    """runs.csv, results.json (with `call`, the benchmark's arguments, and the library versions) and results.md."""
    rows = summarise(runs)
    per_run = io.StringIO()
    writer = csv.DictWriter(per_run, ["category", "model", "seed", *COLUMNS], extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**run, "model": run["variant"]} for run in runs)
    atomic_write(out_path / "runs.csv", lambda tmp: tmp.write_text(per_run.getvalue()))
    against = comparison.against_reference(runs)
    summary = json.dumps({"rows": rows, "against_first": against, "runs": runs, "sets": call["sets"], "call": call,
                          "versions": versions()}, indent=2)  # fmt: skip
    atomic_write(out_path / "results.json", lambda tmp: tmp.write_text(summary))
    atomic_write(out_path / "results.md", lambda tmp: tmp.write_text(markdown(rows, against)))
    return rows


def run_benchmark(models: str, root: str, categories: str, seeds: int, out: str, sets: list[str],
                  progress: bool = True, split_per_seed: bool = False) -> list[dict]:  # fmt: skip
    """Run the grid; the tables are rewritten after every run, so a stopped grid keeps what finished.

    Seed-major order: every model runs seed 0 before any runs seed 1, so a grid stopped early still
    compares all models on the same seeds. `split_per_seed`: each seed validates (and sets its threshold) on its
    own draw of the good images, so the spread over seeds includes which images those are; off, every seed uses
    data.split_seed's draw.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    root_path, out_path = Path(root), Path(out)
    specs = parse_models(models)
    grid = [(c, m, s) for c in list_categories(root_path, categories) for s in range(seeds) for m in specs]
    call = {"models": models, "data": str(root), "categories": categories, "seeds": seeds, "sets": list(sets),
            "split_per_seed": split_per_seed}  # fmt: skip
    runs, rows = [], []
    for category, spec, seed in tqdm(grid, desc="benchmark", disable=bars_off(progress)):
        run_dir = out_path / category / spec[0] / f"seed{seed}"
        report = run_one(spec, root_path, category, seed, sets, run_dir, progress, split_per_seed)
        runs.append({k: v for k, v in report.items() if k != "images"})
        rows = write_tables(runs, out_path, call)
    return rows

"""Seed-by-seed differences between benchmark rows, and whether each clears two standard deviations.

    python bench/compare.py [[PREFIX=]runs/BENCH/runs.csv ...] [--rows LABEL=holdout.json ...] \
        [--metrics LABEL=seed0/metrics.json,seed1/metrics.json,... ...] --pairs A-B ... --out F

Rows come from a benchmark's runs.csv (one row per model or variant; `PREFIX=runs.csv` labels them PREFIX + model, so
two benchmarks of the same variants can be compared) and from bench/holdout.py files
(`--rows prn_k0=holdout_k0.json`: each checkpoint's seed is its hold-out's `data.anomaly_seed`) and from `defectmap
test`'s metrics.json files (`--metrics LABEL=A,B,C`: seeds 0, 1, 2 in the order given). A pair
A-B compares A with B on every metric as `defectmap.comparison.pair_difference` does (the benchmark's own
"against the first model" table uses it too): the difference per seed (seeds both rows have), its mean and std, and
"more than two standard deviations", read as the mean difference above twice the larger of the two rows' sample
standard deviations over seeds (how the README reads the issues' criterion). Differences are in points (x 100).
"""

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from defectmap.comparison import METRICS, pair_difference


def read_runs(path: Path, prefix: str = "") -> dict[str, dict[int, dict[str, float]]]:
    """{prefix + variant: {seed: {metric: value}}} from a benchmark's runs.csv."""
    rows: dict[str, dict[int, dict[str, float]]] = {}
    with path.open() as handle:
        for run in csv.DictReader(handle):
            rows.setdefault(prefix + run["model"], {})[int(run["seed"])] = {m: float(run[m]) for m in METRICS}
    return rows


def read_holdout(path: Path) -> dict[int, dict[str, float]]:
    """{seed: {metric: value}} from bench/holdout.py's output."""
    entries = json.loads(path.read_text())
    return {int(e["training_anomalies"]["seed"]): {m: float(e[m]) for m in METRICS} for e in entries}


def read_metrics(path: Path) -> dict[str, float]:
    """{metric: value} from a metrics.json of `defectmap test`."""
    report = json.loads(path.read_text())
    return {m: float(report[m]) for m in METRICS}


def compare(rows: dict[str, dict[int, dict[str, float]]], pairs: list[tuple[str, str]]) -> dict:
    """Mean and std per row and metric; per pair, the seed-by-seed differences and the two-std verdict."""

    def stats(values: list[float]) -> dict:
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return {"per_seed": [round(v, 4) for v in values], "mean": float(np.mean(values)), "std": std}

    summary = {
        label: {m: stats([by_seed[s][m] for s in sorted(by_seed)]) for m in METRICS} for label, by_seed in rows.items()
    }
    differences = {f"{a} - {b}": {m: pair_difference(rows[a], rows[b], m) for m in METRICS} for a, b in pairs}
    return {"rows": summary, "differences_points": differences}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="benchmark runs.csv files, each optionally PREFIX=runs.csv")
    parser.add_argument("--rows", nargs="*", default=[], metavar="LABEL=holdout.json")
    parser.add_argument("--metrics", nargs="*", default=[], metavar="LABEL=metrics.json,...", help="seeds in order")
    parser.add_argument("--pairs", nargs="+", required=True, metavar="A-B")
    parser.add_argument("--command", action="append", default=[], help="commands that made the rows, recorded")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    label_paths = [spec.partition("=")[::2] for spec in args.rows]
    metric_files = {label: [Path(p) for p in paths.split(",")] for label, paths in
                    (spec.partition("=")[::2] for spec in args.metrics)}  # fmt: skip
    run_files = [(spec.partition("=")[0], Path(spec.partition("=")[2])) if "=" in spec else ("", Path(spec))
                 for spec in args.runs]  # fmt: skip
    missing = [str(p) for p in [*(path for _, path in run_files), *(Path(path) for _, path in label_paths),
                                *(p for paths in metric_files.values() for p in paths)] if not p.is_file()]  # fmt: skip
    if missing or not all(label for label, _ in [*label_paths, *metric_files.items()]):
        parser.error(f"no such file: {', '.join(missing)}" if missing else "--rows and --metrics take LABEL=FILE")
    rows: dict[str, dict[int, dict[str, float]]] = {}
    for prefix, path in run_files:
        rows.update(read_runs(path, prefix))
    for label, path in label_paths:
        rows[label] = read_holdout(Path(path))
    for label, paths in metric_files.items():
        rows[label] = {seed: read_metrics(path) for seed, path in enumerate(paths)}
    pairs = []
    for text in args.pairs:  # labels may hold hyphens: split where both sides name a row
        splits = [(text[:i], text[i + 1 :]) for i, c in enumerate(text) if c == "-"]
        known = [pair for pair in splits if set(pair) <= set(rows)]
        if len(known) != 1:
            parser.error(f"--pairs {text}: give A-B with A and B among the rows: {', '.join(sorted(rows))}")
        if not set(rows[known[0][0]]) & set(rows[known[0][1]]):
            parser.error(f"--pairs {text}: the two rows share no seed")
        pairs.append(known[0])
    result = {"commands": args.command, **compare(rows, pairs)}
    for pair, metrics in result["differences_points"].items():
        print(pair)
        for m, d in metrics.items():
            verdict = "yes" if d["more_than_two_std"] else "no"
            bar = d["two_std_larger_row"]
            print(f"  {m:12s} per seed {d['per_seed']}  mean {d['mean']:+.1f}  2 std {bar:.1f}  {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

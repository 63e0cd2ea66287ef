"""Paired comparisons over seeds: is the difference between two models larger than their seed noise?

A row is one model's results by seed, {seed: {metric: value}}. Two rows are compared on the seeds both have (the
benchmark passes a seed as `train.seed` and `data.anomaly_seed`, so few-shot pairs hold out the same anomalies and
are tested on the same images): the difference per seed in points (x 100), its mean and sample std, and the
project's verdict, "more than two standard deviations": the mean difference above twice the larger of the two rows'
sample standard deviations over seeds. With one shared seed there is no spread to compare with: the verdict is None.
"""

from __future__ import annotations

import numpy as np

from defectmap.outputs import METRIC_NAMES

METRICS = tuple(m for m in METRIC_NAMES if m != "f1_max")  # F1-max is an oracle figure, not a criterion
Row = dict[int, dict[str, float]]


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def pair_difference(a: Row, b: Row, metric: str) -> dict:
    """a minus b on one metric, seed by seed (ascending), in points; `more_than_two_std` as the module says."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two rows share no seed")
    per_seed = [100 * (a[s][metric] - b[s][metric]) for s in seeds]
    bar = 200 * max(_std([v[metric] for v in a.values()]), _std([v[metric] for v in b.values()]))
    mean = float(np.mean(per_seed))
    return {
        "seeds": seeds,
        "per_seed": [round(d, 1) for d in per_seed],
        "mean": round(mean, 1) + 0.0,  # + 0.0: never "-0.0"
        "std": round(_std(per_seed), 1),
        "two_std_larger_row": round(bar, 1),
        "more_than_two_std": bool(mean > bar) if len(seeds) > 1 else None,
    }


def rows_by_category(runs: list[dict]) -> dict[str, dict[str, Row]]:
    """{category: {model: {seed: {metric: value}}}} from benchmark runs ({"category", "variant", "seed", metric:
    value}), models in run order; metrics a run lacks (pixel metrics without masks) are left out."""
    by_category: dict[str, dict[str, Row]] = {}
    for run in runs:
        values = {m: run[m] for m in METRICS if run.get(m) is not None}
        by_category.setdefault(run["category"], {}).setdefault(run["variant"], {})[int(run["seed"])] = values
    return by_category


def against_reference(runs: list[dict]) -> list[dict]:
    """Per category, every model after the first (in run order) against the first, on each metric they all have."""
    comparisons = []
    for category, rows in rows_by_category(runs).items():
        reference, *others = rows
        for model in others:
            shared = sorted(set(rows[model]) & set(rows[reference]))
            if not shared:
                continue
            metrics = [m for m in METRICS if all(m in rows[x][s] for x in (model, reference) for s in shared)]
            differences = {m: pair_difference(rows[model], rows[reference], m) for m in metrics}
            comparisons.append({"category": category, "model": model, "reference": reference, "seeds": shared,
                                **differences})  # fmt: skip
    return comparisons


def markdown(comparisons: list[dict], category: str) -> list[str]:
    """The lines of one category's table: mean difference ± std over seeds, * where it clears the bar."""
    mine = [c for c in comparisons if c["category"] == category]
    if not mine:
        return []
    names = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AU-PRO@0.3", "pixel_ap": "pixel AP"}
    lines = [
        f"Against {mine[0]['reference']}, paired by seed: mean difference in points ± its std over seeds; "
        "* where the mean is above twice the larger row's std over seeds.",
        "",
        "| model | seeds | " + " | ".join(names.values()) + " |",
        "|" + "---|" * (2 + len(names)),
    ]
    for c in mine:
        cells = []
        for metric in names:
            d = c.get(metric)
            star = " *" if d and d["more_than_two_std"] else ""
            cells.append("n/a" if d is None else f"{d['mean']:+.1f} ± {d['std']:.1f}{star}")
        lines.append(f"| {c['model']} | {len(c['seeds'])} | " + " | ".join(cells) + " |")
    return [*lines, ""]

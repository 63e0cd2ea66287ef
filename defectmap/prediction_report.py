"""The report of a `predict` or `watch` output folder: what the line saw, from the folder's files alone (no model).

One self-contained HTML page, like a run's report: decision counts, the histogram of normalised scores, the scores in
the order they were written (a drift in lighting or parts shows there), and two galleries: the highest scores, and the
images closest to the threshold, whose decisions most deserve a person's look.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

import numpy as np
from PIL import Image

from defectmap.checkpoint import atomic_write
from defectmap.data.images import load_image
from defectmap.errors import DataError
from defectmap.outputs import SCORE_HEADER, complete_csv_rows, outline
from defectmap.report import CHECK, STYLE, heat, png_uri, svg_curve, svg_histogram

THRESHOLD = 0.5  # the calibrated threshold on the scale of normalised_score


def complete_rows(path: Path) -> list[dict]:
    """A CSV's rows as dicts, without a last line still being written (a watcher appends while this reads); none
    when the file is missing."""
    rows = complete_csv_rows(path) if path.is_file() else []
    return [dict(zip(rows[0], row, strict=False)) for row in rows[1:]]


def rolling(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each `window` consecutive values (fewer at the start), one per value."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (sums[1:] - sums[starts]) / (np.arange(1, len(values) + 1) - starts)


def _panel(folder: Path, row: dict, side: int = 160) -> str:
    """Image (grey where the file is gone) | anomaly map over it (blue to red, mid = threshold) | predicted regions
    outlined in red."""
    values = np.asarray(Image.open(folder / row["map"]), dtype=np.float32) / 255
    try:
        image = load_image(row["path"])
    except DataError:  # moved or deleted since it was scored: the map still tells
        image = None
    if image is None or image.shape[:2] != values.shape:  # (or replaced by another image)
        image = np.full((*values.shape, 3), 0.5, dtype=np.float32)
    shown = image.copy()
    shown[outline(np.asarray(Image.open(folder / row["mask"])) > 0)] = [1.0, 0.0, 0.0]
    panels = np.concatenate([image, 0.55 * image + 0.45 * heat(values), shown], axis=1)  # as in a run's report
    picture = Image.fromarray(np.round(np.clip(panels, 0, 1) * 255).astype(np.uint8))
    picture = picture.resize((max(1, round(picture.width * side / picture.height)), side), Image.BILINEAR)
    return png_uri(np.asarray(picture))


def _card(folder: Path, row: dict) -> str:
    """One gallery entry: the panels, the file name (its whole path on hover), decision, score, regions."""
    name, regions = html.escape(Path(row["path"]).name), row["regions"]
    words = f"{row['decision']}, normalised score {float(row['normalised_score']):.3f}, {regions} region"
    words += "s" * (regions != "1")
    return (f'<div class="card" title="{html.escape(row["path"])}"><img alt="{name}" src="{_panel(folder, row)}">'
            f'<span class="{"miss" if row["decision"] == "defect" else ""}">{name}: {words}</span></div>')  # fmt: skip


def write_prediction_report(folder: str | Path, *, gallery_size: int = 12, window: int = 50) -> Path:
    """FOLDER/report.html from the scores.csv, errors.csv, maps/ and masks/ that `predict` or `watch` wrote there.
    Rolling figures in the order scored use `window` images."""
    folder = Path(folder)
    if not (folder / "scores.csv").is_file():
        raise DataError(f"no scores.csv in {folder}: give the --out folder of `defectmap predict` or `watch`")
    with (folder / "scores.csv").open(newline="") as handle:
        header = next(csv.reader(handle), [])
    missing = [c for c in SCORE_HEADER if c not in header]
    if missing:
        raise DataError(f"{folder / 'scores.csv'} has no {', '.join(missing)} column: predict into a new folder")
    rows = complete_rows(folder / "scores.csv")
    errors = complete_rows(folder / "errors.csv")
    scores = np.array([float(r["normalised_score"]) for r in rows])
    rejected = np.array([r["decision"] == "defect" for r in rows])
    regions = sum(int(r["regions"]) for r in rows)
    body = [
        f"<h1>defectmap predictions in {html.escape(str(folder.resolve()))}</h1>",
        f"<p><b>{len(rows)} images scored: {rejected.sum()} defect ({100 * rejected.mean() if rows else 0:.1f}%), "
        f"{len(rows) - rejected.sum()} good</b>; {len(errors)} unreadable; {regions} predicted defect regions. "
        f"Normalised scores put the good validation images' median at 0 and the threshold at {THRESHOLD}.</p>",
    ]
    if rows:
        top = max(1.0, float(np.quantile(scores, 0.99)))  # a few huge scores must not squash the rest
        body.append('<div class="charts">')
        title = "normalised scores: good (blue), defect (red)"
        body.append(
            svg_histogram(np.minimum(scores[~rejected], top), np.minimum(scores[rejected], top), THRESHOLD, title)
        )
        window = min(window, len(rows))
        order = np.linspace(0, 1, len(rows))
        body.append(svg_curve(f"in the order scored, over {window} images", "first to last image scored",
                               "share / score", [("share rejected", order, rolling(rejected, window), "#d62728"),
                               ("mean normalised score (clipped at 1)", order, rolling(np.minimum(scores, 1), window),
                                "#1f77b4")]))  # fmt: skip
        body.append(f"</div><p>Left: scores above {top:.2f} (the 99th percentile, or 1) are counted at it. Right: "
                    f"the share of images rejected (red) and their mean normalised score (blue, clipped at 1; "
                    f"{THRESHOLD} is the threshold), both over the last {window} images, in the order of scores.csv."
                    "</p>")  # fmt: skip
        highest = list(np.argsort(-scores, kind="stable")[:gallery_size])
        closest = [i for i in np.argsort(np.abs(scores - THRESHOLD), kind="stable") if i not in highest]
        for title, chosen in (("Highest scores", highest), ("Closest to the threshold", closest[:gallery_size])):
            body.append(f"<h2>{title}: image | anomaly map | predicted defect regions</h2>")
            body += [_card(folder, rows[i]) for i in chosen]
    if errors:
        items = "".join(f"<tr><td>{html.escape(e['path'])}</td><td>{html.escape(e['error'])}</td></tr>"
                        for e in errors[:100])  # fmt: skip
        body.append(f"<h2>Unreadable images ({len(errors)}, the first 100)</h2><table>{items}</table>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>defectmap predictions</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}{CHECK}</body></html>")  # fmt: skip
    path = folder / "report.html"
    atomic_write(path, lambda tmp: tmp.write_text(page))
    return path

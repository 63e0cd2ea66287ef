"""What runs leave on disk: metrics.json, scores.csv, anomaly-map PNGs, and the printed table."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from defectmap.checkpoint import atomic_write
from defectmap.data.images import is_image_file
from defectmap.data.mvtec import Sample
from defectmap.errors import DataError
from defectmap.threshold import normalise

METRIC_NAMES = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "f1_max")


def collect_images(paths: Iterable[str | Path]) -> list[tuple[Sample, str]]:
    """Image files named directly or found under folders, each with a unique output name."""
    found: list[tuple[Sample, str]] = []
    for given in map(Path, paths):
        if given.is_dir():
            files = sorted(p for p in given.rglob("*") if is_image_file(p))
            found += [(Sample(p, 0), "__".join(p.relative_to(given).with_suffix("").parts)) for p in files]
        elif given.is_file():
            found.append((Sample(given, 0), given.stem))
        else:
            raise DataError(f"{given} does not exist: give image files or folders of images")
    if not found:
        raise DataError(f"no images (PNG, JPG, BMP, TIFF) found in {', '.join(map(str, paths))}")
    seen: dict[str, int] = {}
    unique = []
    for sample, name in found:
        seen[name] = seen.get(name, 0) + 1
        unique.append((sample, name if seen[name] == 1 else f"{name}_{seen[name]}"))
    return unique


def map_to_png(anomaly_map: np.ndarray, calibration: dict, path: Path) -> None:
    """8-bit grey map: the normal median is black, the calibrated pixel threshold mid-grey."""
    values = normalise(anomaly_map, calibration["map_median"], calibration["map_threshold"])
    Image.fromarray(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)).save(path)


def write_predictions(
    rows: Iterable[dict], names: dict[Path, str], calibration: dict, out_dir: Path
) -> tuple[int, int]:
    """Write one map PNG per image, `scores.csv` and `errors.csv` (unreadable images); (scored, skipped)."""
    maps_dir = out_dir / "maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    buffer, error_buffer = io.StringIO(), io.StringIO()
    writer, error_writer = csv.writer(buffer), csv.writer(error_buffer)
    writer.writerow(["path", "score", "normalised_score", "decision", "map"])
    error_writer.writerow(["path", "error"])
    count = skipped = 0
    for row in rows:
        if "error" in row:
            error_writer.writerow([str(row["path"]), row["error"]])
            skipped += 1
            continue
        map_name = f"{names[row['path']]}.png"
        map_to_png(row["map"], calibration, maps_dir / map_name)
        decision = "defect" if row["defective"] else "good"
        writer.writerow(
            [str(row["path"]), f"{row['score']:.8g}", f"{row['normalised_score']:.6f}", decision, f"maps/{map_name}"]
        )
        count += 1
    atomic_write(out_dir / "scores.csv", lambda tmp: tmp.write_text(buffer.getvalue()))
    atomic_write(out_dir / "errors.csv", lambda tmp: tmp.write_text(error_buffer.getvalue()))
    return count, skipped


def write_metrics(report: dict, out_dir: Path) -> Path:
    path = out_dir / "metrics.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    return path


def format_table(report: dict) -> str:
    lines = [
        f"{report['method']} on {report['category']}: {report['test_images']} test images "
        f"({report['defective_images']} defective)"
    ]
    for name in METRIC_NAMES:
        value = report.get(name)
        label = name + (" (oracle threshold)" if name == "f1_max" else "")
        lines.append(f"  {label:<28} {'n/a' if value is None else f'{value:.4f}'}")
    lines.append(
        f"  at the calibrated threshold: {report['good_rejected']} good rejected, "
        f"{report['defects_missed']} defects missed"
    )
    lines += [f"  note: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)

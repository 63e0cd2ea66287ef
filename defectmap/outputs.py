"""What runs leave on disk: metrics.json, scores.csv, regions.csv, anomaly-map PNGs, and the printed table."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from defectmap.checkpoint import atomic_write
from defectmap.data.images import is_image_file, load_image
from defectmap.data.mvtec import Sample
from defectmap.errors import DataError
from defectmap.regions import REGION_FIELDS, defect_pixels, defect_regions
from defectmap.threshold import CONFIDENCE, normalise, rejections_expected

METRIC_NAMES = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "f1_max")
# zlib level of the PNGs predict and the service write. Against PIL's default 6 on Magnetic Tile: overlays encode
# 3.6x faster for 6% more bytes, maps 1.8x faster for 49% more (7 KB each); bench/png_level.py.
PNG_LEVEL = 1


def collect_images(paths: Iterable[str | Path], skip: Path | None = None) -> list[tuple[Sample, str]]:
    """Image files named directly or found under folders (not under the folder `skip`, where the results go, so
    an earlier run's maps are not scored), each with a unique output name."""
    found: list[tuple[Sample, str]] = []
    skip = skip.resolve() if skip else None
    for given in map(Path, paths):
        if given.is_dir():
            files = sorted(p for p in given.rglob("*") if is_image_file(p) and skip not in p.resolve().parents)
            found += [(Sample(p, 0), "__".join(p.relative_to(given).with_suffix("").parts)) for p in files]
        elif given.is_file():
            found.append((Sample(given, 0), given.stem))
        else:
            raise DataError(f"{given} does not exist: give image files or folders of images")
    if not found:
        raise DataError(f"no images (PNG, JPG, BMP, TIFF) found in {', '.join(map(str, paths))}")
    taken = {name for _, name in found}  # a suffixed name must not be another file's own name either
    used: set[str] = set()
    unique = []
    for sample, name in found:
        unique.append((sample, unique_name(name, used, taken)))
        used.add(unique[-1][1])
    return unique


def unique_name(name: str, used: set[str], taken: set[str] = frozenset()) -> str:
    """`name`, or `name_2`, `name_3` ... : the first not in `used`; a suffixed one must not be in `taken` either."""
    candidate, n = name, 1
    while candidate in used or (candidate != name and candidate in taken):
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def complete_csv_rows(path: Path) -> list[list[str]]:
    """A CSV's rows without a last line still being written (or torn by a kill mid-write)."""
    text = path.read_text()
    return list(csv.reader(io.StringIO(text[: text.rfind("\n") + 1])))


def _save_png(pixels: np.ndarray, path: Path | io.BytesIO) -> None:
    Image.fromarray(pixels).save(path, format="PNG", compress_level=PNG_LEVEL)


def map_to_png(anomaly_map: np.ndarray, calibration: dict, path: Path | io.BytesIO) -> None:
    """8-bit grey map: the normal median is black, the calibrated pixel threshold mid-grey."""
    values = normalise(anomaly_map, calibration["map_median"], calibration["map_threshold"])
    _save_png(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8), path)


def outline(mask: np.ndarray) -> np.ndarray:
    """The border of a boolean mask's regions, about 0.5% of the image height thick (at least one pixel)."""
    return mask & ~ndimage.binary_erosion(mask, iterations=max(1, mask.shape[0] // 200))


def overlay_to_png(image: np.ndarray, defect: np.ndarray, path: Path) -> None:
    """The image with its predicted defect regions tinted and outlined in red."""
    shown = image.copy()
    shown[defect] = 0.6 * shown[defect] + 0.4 * np.array([1.0, 0.0, 0.0])
    shown[outline(defect)] = [1.0, 0.0, 0.0]
    _save_png(np.round(shown * 255).astype(np.uint8), path)


SCORE_HEADER = ["path", "score", "normalised_score", "decision", "map", "mask", "regions"]
ERROR_HEADER = ["path", "error"]
REGION_HEADER = ["path", "region", *REGION_FIELDS]  # one row per predicted defect region, numbered from 1 per image
LOGS = {"scores.csv": SCORE_HEADER, "errors.csv": ERROR_HEADER, "regions.csv": REGION_HEADER}
IMAGE_FOLDERS = ("maps", "masks", "overlays")  # what predict writes per image


def _open_log(
    path: Path, header: list[str], resume: bool, keep: set[str] | None = None
) -> tuple[io.TextIOWrapper, list[list[str]]]:
    """Open a CSV for appending, with the rows it keeps: on resume its complete rows (a torn last line is cut off),
    and with `keep` only those whose path is in it; otherwise none (the file starts afresh)."""
    if resume and path.is_file():
        rows = complete_csv_rows(path)
        if rows and rows[0] == header:
            rows = [row for row in rows[1:] if keep is None or row[0] in keep]
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerows([header, *rows])
            return path.open("a", newline=""), rows
    handle = path.open("w", newline="")
    csv.writer(handle).writerow(header)
    return handle, []


def mask_to_png(defect: np.ndarray, path: Path) -> None:
    """Binary defect mask: white where a defect is predicted."""
    _save_png((defect * 255).astype(np.uint8), path)


class PredictionWriter:
    """The files predict writes into one folder, kept open for appending: `scores.csv` (one row per image, flushed as
    it goes), `errors.csv`, `regions.csv` (the `defect_regions` of at least `min_area` pixels, written before their
    image's score row), `maps/`, `masks/`, and with `overlays` `overlays/` (each image decoded a second time for it:
    the scoring path keeps only the model-size copy).

    With `resume` the rows already in the folder are kept and `done` holds their image paths; otherwise the files
    start afresh. `names` holds the map file names in use (without `.png`).
    """

    def __init__(self, calibration: dict, out_dir: Path, *, resume: bool, overlays: bool, min_area: int,
                 max_pixels: int) -> None:  # fmt: skip
        self.calibration, self.out_dir, self.overlays = calibration, out_dir, overlays
        self.min_area, self.max_pixels = min_area, max_pixels
        for folder in IMAGE_FOLDERS[: 3 if overlays else 2]:
            (out_dir / folder).mkdir(parents=True, exist_ok=True)
        self._scores, scored = _open_log(out_dir / "scores.csv", SCORE_HEADER, resume)
        self._errors, failed = _open_log(out_dir / "errors.csv", ERROR_HEADER, resume)
        self.done = {row[0] for row in scored + failed}
        self.names = {Path(row[SCORE_HEADER.index("map")]).stem for row in scored}
        # Regions are written before their image's score row: on resume only those of images already done are kept.
        self._regions, _ = _open_log(out_dir / "regions.csv", REGION_HEADER, resume, keep=self.done)

    def write(self, row: dict, name: str) -> int | None:
        """One row of `engine.predict` under the file name `name`: its files and CSV rows. Returns the number of
        regions written, or None for an unreadable image (a row of errors.csv)."""
        path = str(row["path"])
        self.done.add(path)
        if "error" in row:
            csv.writer(self._errors).writerow([path, row["error"]])
            self._errors.flush()
            return None
        map_name = f"{name}.png"
        self.names.add(name)
        map_to_png(row["map"], self.calibration, self.out_dir / "maps" / map_name)
        defect = defect_pixels(row["map"], self.calibration)
        mask_to_png(defect, self.out_dir / "masks" / map_name)
        if self.overlays:
            overlay_to_png(load_image(row["path"], self.max_pixels), defect, self.out_dir / "overlays" / map_name)
        found_regions = defect_regions(row["map"], self.calibration, self.min_area)
        csv.writer(self._regions).writerows([path, number, *region_cells(region)]
                                            for number, region in enumerate(found_regions, 1))  # fmt: skip
        self._regions.flush()
        csv.writer(self._scores).writerow([path, f"{row['score']:.8g}", f"{row['normalised_score']:.6f}",
                                           row["decision"], f"maps/{map_name}", f"masks/{map_name}",
                                           len(found_regions)])  # fmt: skip
        self._scores.flush()
        return len(found_regions)

    def close(self) -> None:
        for handle in (self._scores, self._errors, self._regions):
            handle.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def predict_to_folder(
    detector,
    found: list[tuple[Sample, str]],
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    overlays: bool = False,
    min_area: int = 1,
) -> tuple[int, int]:
    """Score images into OUT with a `PredictionWriter`, each image's files named by its name in `found`.

    With `resume`, images already in either CSV are not written again. Batches keep their boundaries
    (the batch holding the first unfinished image is recomputed), so a resumed run writes exactly
    the rows an uninterrupted one would. Returns (scored, skipped as unreadable) in this call.
    """
    from defectmap import engine

    names = {sample.path: name for sample, name in found}
    scored = skipped = 0
    with PredictionWriter(detector.calibration, out_dir, resume=resume, overlays=overlays, min_area=min_area,
                          max_pixels=detector.config.data.max_pixels) as writer:  # fmt: skip
        done = set(writer.done)
        first = next((i for i, (sample, _) in enumerate(found) if str(sample.path) not in done), len(found))
        batch = detector.config.train.eval_batch_size
        samples = [sample for sample, _ in found][first - first % batch :]
        for row in engine.predict(detector, samples, progress=progress):
            if str(row["path"]) in done:
                continue
            if writer.write(row, names[row["path"]]) is None:
                skipped += 1
            else:
                scored += 1
    return scored, skipped


def region_cells(region: dict) -> list[str]:
    """A region's `REGION_FIELDS` as CSV cells: pixel counts as integers, the peaks as scores are written."""
    return [str(region[f]) if isinstance(region[f], int) else f"{region[f]:.6g}" for f in REGION_FIELDS]


def decision_counts(scores_csv: Path) -> dict[str, int]:
    """How many rows of a scores.csv say `defect` and how many `good` (all rows, e.g. after a resumed run)."""
    counts = {"defect": 0, "good": 0}
    with open(scores_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            counts[row["decision"]] = counts.get(row["decision"], 0) + 1
    return counts


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
        interval = report.get("image_auroc_interval95") if name == "image_auroc" else None
        spread = f"  (95% interval {interval[0]:.4f}-{interval[1]:.4f} over resampled test images)" if interval else ""
        lines.append(f"  {label:<28} {'n/a' if value is None else f'{value:.4f}'}{spread}")
    lines += textwrap.wrap(threshold_sentence(report), 116, initial_indent="  ", subsequent_indent="    ")
    if report.get("regions"):
        lines += textwrap.wrap(regions_sentence(report["regions"]), 116, initial_indent="  ", subsequent_indent="    ")
    for defect, row in report.get("defect_types", {}).items():
        auroc = "n/a" if row["image_auroc"] is None else f"{row['image_auroc']:.4f}"
        lines.append(f"    {defect + ':':<26} image AUROC {auroc}, {row['missed']} of {row['images']} missed")
    for note in report.get("notes", []):
        lines += textwrap.wrap(f"note: {note}", 116, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)


def threshold_promise(report: dict) -> tuple[str, bool] | None:
    """What the threshold's good images promised for the test's good images (None where not recorded), and whether
    more were rejected than that."""
    good, rate = report["test_images"] - report["defective_images"], report.get("expected_false_reject_rate")
    if not good or rate is None:
        return None
    expected, most = rejections_expected(rate, report["calibration_images"], good)
    promise = (
        f"the {report['calibration_images']} good images it was set on promise about {expected:.1f} of {good} good "
        f"rejected, at most {most} at {CONFIDENCE:.0%} confidence"
    )
    return promise, report["good_rejected"] > most


EXCEEDED = (
    "more good parts rejected than promised: the test's good images differ from those the threshold was set on "
    "(other parts, lighting, drift); re-calibrate on good images like them (`threshold --good DIR`)"
)


def threshold_sentence(report: dict) -> str:
    """What the calibrated threshold did on the test, against what its good images promised where recorded."""
    rejected, missed = report["good_rejected"], report["defects_missed"]
    sentence = f"at the calibrated threshold: {rejected} good rejected, {missed} defects missed"
    if promised := threshold_promise(report):
        sentence += f" ({promised[0]})" + (f"; {EXCEEDED}" if promised[1] else "")
    return sentence


def regions_sentence(figures: dict) -> str:
    """`evaluate`'s region figures (`regions.region_figures` at min area 1) in words, for the table and the report."""
    f = {k: "n/a" if v is None else f"{100 * v:.1f}%" for k, v in figures.items()}
    good = "n/a" if figures["good_images_clear"] is None else f"{100 * (1 - figures['good_images_clear']):.1f}%"
    return (
        f"outlined at the pixel threshold (as in regions.csv): {f['defects_found']} of {figures['truth_regions']} "
        f"marked defects touched; {f['defective_images_outlined']} of {figures['defective_images']} defective images "
        f"outlined, the strongest region on the defect in {f['top_region_on_defect_when_outlined']} of those; "
        f"{good} of {figures['good_images']} good images outlined"
    )


def merge_parts(found: list[tuple[Sample, str]], out_dir: Path, parts: list[Path]) -> tuple[int, int]:
    """Join per-process prediction folders into OUT: rows in the original image order, image folders moved.

    Returns (scored, skipped as unreadable) over all the parts.
    """
    tables: dict[str, dict[str, list[list[str]]]] = {name: {} for name in LOGS}  # file -> image path -> rows
    for part in parts:
        for name, table in tables.items():
            with (part / name).open(newline="") as handle:
                reader = csv.reader(handle)
                next(reader)
                for row in reader:
                    table.setdefault(row[0], []).append(row)
        for folder in IMAGE_FOLDERS:
            if (part / folder).is_dir():
                (out_dir / folder).mkdir(parents=True, exist_ok=True)
                for file in (part / folder).iterdir():
                    file.replace(out_dir / folder / file.name)
    for name, table in tables.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(LOGS[name])
        writer.writerows(row for s, _ in found for row in table.get(str(s.path), []))
        text = buffer.getvalue()
        atomic_write(out_dir / name, lambda tmp, text=text: tmp.write_text(text))
    for part in parts:
        for folder in IMAGE_FOLDERS:
            if (part / folder).is_dir():
                (part / folder).rmdir()
        for name in LOGS:
            (part / name).unlink()
        part.rmdir()
    parts[0].parent.rmdir()
    return len(tables["scores.csv"]), len(tables["errors.csv"])

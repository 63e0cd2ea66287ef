"""`defectmap watch`: score images as they arrive in a folder, for a camera or line PC that saves parts to disk.

Each image is scored once, when its last write is `settle` seconds old, into the files `predict` writes. The
output folder's rows are kept, so a restarted watcher goes on where it stopped.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from defectmap import engine
from defectmap.data.images import IMAGE_SUFFIXES
from defectmap.errors import ConfigError, DataError
from defectmap.outputs import PredictionWriter, unique_name
from defectmap.text import plural

SLEEP_SLICE = 0.1  # seconds: how soon a stop request is seen while the folder is idle


def arrived(folder: Path, skip: Path, done: set[str], settle: float, now: float) -> tuple[list[Path], float | None]:
    """Image files under `folder` not in `done`, last written at least `settle` seconds before `now`, oldest
    first, and the seconds until the next of the others is (None: no other). Hidden files and folders and the
    folder `skip` (where the results go) are not searched."""
    found, waiting = [], None
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and Path(root, d).resolve() != skip]
        for name in files:
            path = os.path.join(root, name)  # strings: on a folder of 20,000 done images a look takes 0.1 s with Paths
            if path in done or name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            try:
                age = now - os.stat(path).st_mtime  # a writer still at work keeps moving the modification time
            except FileNotFoundError:  # moved away since the listing
                continue
            if age >= settle:
                found.append((-age, path))
            else:
                waiting = settle - age if waiting is None else min(waiting, settle - age)
    return [Path(path) for _, path in sorted(found)], waiting


def output_name(path: Path, folder: Path, used: set[str]) -> str:
    """The file name (no suffix) of an image's map: its path under `folder` joined by `__`, suffixed `_2`, `_3`
    ... where another image already has it."""
    return unique_name("__".join(path.relative_to(folder).with_suffix("").parts), used)


def row_line(row: dict, regions: int | None) -> str:
    """One printed line per image: decision, normalised score, regions, path (or the error)."""
    if regions is None:
        return f"error  {row['path']}: {row['error']}"
    return f"{row['decision']:<6} {row['normalised_score']:.3f}  {plural(regions, 'region')}  {row['path']}"


def check_arguments(folder: str | Path, out_dir: str | Path, interval: float, settle: float) -> None:
    """`watch_folder`'s arguments, checked before anything is loaded or written."""
    if not interval > 0 or not settle >= 0:  # also NaN
        raise ConfigError(f"--interval must be above 0 and --settle at least 0 seconds, got {interval} and {settle}")
    if not Path(folder).is_dir():
        raise DataError(f"{folder} is not a folder: give the folder that new images arrive in")
    if Path(out_dir).resolve() == Path(folder).resolve():
        raise DataError(f"--out is the watched folder {folder}: give another folder, or a subfolder of it")


def watch_folder(
    detector: engine.Detector,
    folder: str | Path,
    out_dir: str | Path,
    *,
    stop: Callable[[], bool],
    interval: float = 0.5,
    settle: float = 0.5,
    overlays: bool = False,
    min_area: int = 1,
    on_row: Callable[[dict, int | None], None] | None = None,
) -> tuple[int, int]:
    """Score every image that arrives under `folder` into `out_dir` until `stop()` is true; images already there
    are scored first. `on_row(row, regions)` is called after each image is written (regions None: unreadable).

    Paths are written absolute, so a watcher restarted from anywhere skips what is in `out_dir` already. The folder
    is looked at again as soon as a batch is done, and every `interval` seconds while nothing new is there.
    Returns (scored, skipped as unreadable) in this call.
    """
    check_arguments(folder, out_dir, interval, settle)
    folder, out_dir = Path(folder).absolute(), Path(out_dir).absolute()
    skip, scored, skipped, missing = out_dir.resolve(), 0, 0, False
    with PredictionWriter(detector.calibration, out_dir, resume=True, overlays=overlays, min_area=min_area,
                          max_pixels=detector.config.data.max_pixels) as writer:  # fmt: skip
        while not stop():
            if folder.is_dir() == missing:  # a network share that went away, or came back
                missing = not missing
                warnings.warn(f"{folder} is {'gone: waiting for it' if missing else 'back'}", stacklevel=1)
            new, waiting = arrived(folder, skip, writer.done, settle, time.time())
            for row in engine.predict(detector, new, progress=False) if new else ():
                regions = writer.write(row, output_name(row["path"], folder, writer.names))
                if regions is None:
                    skipped += 1
                else:
                    scored += 1
                if on_row:
                    on_row(row, regions)
                if stop():
                    break
            if not new:  # look again after `interval`, or as soon as an image waiting to settle is ready
                idle_until = time.monotonic() + (interval if waiting is None else min(interval, waiting))
                while not stop() and time.monotonic() < idle_until:
                    time.sleep(max(0.0, min(SLEEP_SLICE, idle_until - time.monotonic())))
    return scored, skipped

"""`defectmap watch`: images scored as they arrive, once each, into the files `predict` writes."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectmap import engine, training
from defectmap.cli import main
from defectmap.watch import arrived, output_name, watch_folder
from tests.conftest import tiny_config


@pytest.fixture
def checkpoint(tiny_dataset, tmp_path) -> Path:
    return training.fit(tiny_config("ae", tiny_dataset), tmp_path / "run", progress=False)


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


class Line:
    """A camera that saves parts while the watcher runs: `step(n)` drops images once `n` rows exist, then stops."""

    def __init__(self, out: Path, drops: list[tuple[int, list[tuple[Path, Path]]]]):
        self.out, self.drops, self.calls = out, drops, 0

    def stop(self) -> bool:
        self.calls += 1
        assert self.calls < 10_000, "the watcher never scored what arrived"
        done = len(_rows(self.out / "scores.csv")) + len(_rows(self.out / "errors.csv"))
        while self.drops and done >= self.drops[0][0]:
            for source, target in self.drops.pop(0)[1]:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target) if source.is_file() else target.write_bytes(b"not an image")
        return not self.drops


def test_arrivals_are_scored_once_as_predict_scores_them(checkpoint, tiny_dataset, tmp_path):
    test = sorted((tiny_dataset / "tiny" / "test").rglob("*.*g"))  # 7 images: 3 good .jpg, 4 defective .png
    folder, out = tmp_path / "line", tmp_path / "line" / "results"  # results inside the watched folder
    folder.mkdir()
    for image in test[:2]:
        shutil.copyfile(image, folder / image.name)  # the backlog
    (folder / "notes.txt").write_text("not an image")
    shutil.copyfile(test[2], folder / ".hidden.png")
    # Numbered so that the path order is the copy order: copies may share a modification time (the clock tick).
    arrivals = [(image, folder / "cam" / f"{i}_{image.name}") for i, image in enumerate(test[2:6], 2)]
    arrivals.append((tmp_path / "x", folder / "torn.png"))
    line = Line(out, [(2, arrivals[:3]), (5, arrivals[3:]), (7, [])])
    detector = engine.load(checkpoint, device="cpu")
    seen = []
    scored, skipped = watch_folder(detector, folder, out, stop=line.stop, interval=0.01, settle=0,
                                   on_row=lambda row, regions: seen.append((row["path"], regions)))  # fmt: skip
    assert (scored, skipped) == (6, 1)
    rows, errors = _rows(out / "scores.csv"), _rows(out / "errors.csv")
    assert [r["path"] for r in errors] == [str(folder / "torn.png")] and "torn.png" in errors[0]["error"]
    expected = [folder / image.name for image in test[:2]] + [target for _, target in arrivals[:4]]
    assert [r["path"] for r in rows] == [str(p) for p in expected]  # absolute paths, in arrival order, each once
    assert [Path(r["map"]).name for r in rows[2:]] == [
        f"cam__{i}_{image.stem}.png" for i, image in enumerate(test[2:6], 2)
    ]
    assert seen == [(path, int(row["regions"])) for path, row in zip(expected, rows, strict=True)] + [
        (folder / "torn.png", None)
    ]

    # The same images through predict: the same scores, decisions, maps and regions.
    reference = tmp_path / "reference"
    assert main(["predict", str(checkpoint), *map(str, expected), "--out", str(reference), "--quiet"]) == 0
    for mine, theirs in zip(rows, _rows(reference / "scores.csv"), strict=True):
        assert float(mine["score"]) == pytest.approx(float(theirs["score"]), rel=1e-5)
        assert mine["decision"] == theirs["decision"] and mine["regions"] == theirs["regions"]
        gap = np.abs(np.asarray(Image.open(out / mine["map"]), int) - np.asarray(Image.open(reference / theirs["map"])))
        assert gap.max() <= 1
    assert len(_rows(out / "regions.csv")) == len(_rows(reference / "regions.csv"))

    # Restarted: what is in OUT is not scored again; a new arrival with a name taken gets its own.
    shutil.copyfile(test[6], folder / f"cam__2_{test[2].stem}.png")
    line = Line(out, [(8, [])])
    assert watch_folder(detector, folder, out, stop=line.stop, interval=0.01, settle=0) == (1, 0)
    rows = _rows(out / "scores.csv")
    assert len(rows) == 7 and rows[-1]["map"] == f"maps/cam__2_{test[2].stem}_2.png"
    assert sorted(p.name for p in (out / "maps").iterdir()) == sorted(Path(r["map"]).name for r in rows)


def test_arrived_waits_for_writes_to_settle_and_goes_oldest_first(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / ".cache").mkdir()
    now = time.time()
    ages = {"b.png": 30, "a.png": 20, "new.png": 0.75, "newer.png": 0.5, "out/map.png": 60, ".cache/x.png": 60,
            ".tmp.png": 60, "sub/c.JPG": 40, "done.png": 50, "skip.txt": 60}  # fmt: skip
    for name, age in ages.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
        os.utime(path, (now - age, now - age))
    found, waiting = arrived(tmp_path, (tmp_path / "out").resolve(), {str(tmp_path / "done.png")}, 1.0, now)
    assert found == [tmp_path / "sub" / "c.JPG", tmp_path / "b.png", tmp_path / "a.png"]
    assert waiting == pytest.approx(0.25)  # new.png is ready in a quarter of a second
    found, waiting = arrived(tmp_path, tmp_path / "out", set(), 0.6, now)
    assert tmp_path / "new.png" in found and waiting == pytest.approx(0.1)
    assert arrived(tmp_path, tmp_path / "out", set(), 0, now)[1] is None


def test_output_names_are_the_path_under_the_folder_and_unique(tmp_path):
    used = {"a", "cam__b"}
    assert output_name(tmp_path / "cam" / "b.png", tmp_path, used) == "cam__b_2"
    assert output_name(tmp_path / "c.tif", tmp_path, used) == "c"
    assert output_name(tmp_path / "a.png", tmp_path, used | {"a_2"}) == "a_3"


def test_watch_on_the_command_line_stops_cleanly_on_sigterm(checkpoint, tiny_dataset, tmp_path):
    folder, out = tmp_path / "line", tmp_path / "out"
    shutil.copytree(tiny_dataset / "tiny" / "test" / "good", folder)
    command = [sys.executable, "-m", "defectmap", "watch", str(checkpoint), str(folder), "--out", str(out),
               "--interval", "0.05", "--settle", "0", "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_rows(out / "scores.csv")) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith(f"watching {folder} for new images") and lines[-1].startswith("stopped by SIGTERM")
    rows = _rows(out / "scores.csv")
    assert len(rows) == 3 and "scored 3 images, 0 unreadable" in lines[-1]
    for row, line in zip(rows, lines[1:-1], strict=True):  # one line per image, as it is written
        assert line.split() == [row["decision"], f"{float(row['normalised_score']):.3f}", row["regions"],
                                "region" + "s" * (row["regions"] != "1"), row["path"]]  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing"], "missing is not a folder"),
        (["line", "--interval", "0"], "--interval must be above 0"),
        (["line", "--settle", "-1"], "--settle at least 0"),
        (["line", "--min-area", "0"], "--min-area must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line_exit_2_and_write_nothing(checkpoint, tmp_path, capsys, args, message):
    (tmp_path / "line").mkdir()
    code = main(["watch", str(checkpoint), str(tmp_path / args[0]), "--out", str(tmp_path / "out"), *args[1:]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_results_in_the_watched_folder_itself_are_refused(checkpoint, tmp_path, capsys):
    (tmp_path / "line").mkdir()
    assert main(["watch", str(checkpoint), str(tmp_path / "line"), "--out", str(tmp_path / "line")]) == 2
    assert "--out is the watched folder" in capsys.readouterr().err and not (tmp_path / "line" / "maps").exists()


def test_predict_does_not_score_its_own_results_inside_the_input_folder(checkpoint, tiny_dataset, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(tiny_dataset / "tiny" / "test", folder)
    for _ in range(2):  # the second run finds the first run's maps and masks under images/pred
        assert main(["predict", str(checkpoint), str(folder), "--out", str(folder / "pred"), "--quiet"]) == 0
        assert len(_rows(folder / "pred" / "scores.csv")) == 7


def test_a_stop_is_honoured_between_images_and_the_rest_scored_on_restart(checkpoint, tiny_dataset, tmp_path):
    folder, out = tmp_path / "line", tmp_path / "out"
    shutil.copytree(tiny_dataset / "tiny" / "test", folder)  # 7 images: two batches of 4
    detector = engine.load(checkpoint, device="cpu")
    assert watch_folder(detector, folder, out, stop=Line(out, [(1, [])]).stop, settle=0) == (1, 0)
    assert len(_rows(out / "scores.csv")) == 1  # its batch was computed, but not written past the stop
    assert watch_folder(detector, folder, out, stop=Line(out, [(7, [])]).stop, settle=0) == (6, 0)
    assert len({r["path"] for r in _rows(out / "scores.csv")}) == 7


def test_a_folder_that_goes_away_is_waited_for(checkpoint, tiny_dataset, tmp_path):
    folder, out = tmp_path / "share" / "line", tmp_path / "out"
    folder.mkdir(parents=True)
    image = next((tiny_dataset / "tiny" / "test" / "good").iterdir())
    calls = []

    def stop() -> bool:  # the share is unmounted after the first look and back a few looks later, with an image
        calls.append(1)
        if len(calls) == 1:
            folder.rmdir()
        if len(calls) == 5:
            folder.mkdir()
            shutil.copyfile(image, folder / image.name)
        assert len(calls) < 10_000
        return bool(_rows(out / "scores.csv"))

    with pytest.warns(UserWarning) as caught:
        watch_folder(engine.load(checkpoint, device="cpu"), folder, out, stop=stop, interval=0.01, settle=0)
    assert [str(w.message) for w in caught if w.category is UserWarning] == [
        f"{folder} is gone: waiting for it",
        f"{folder} is back",
    ]
    assert [r["path"] for r in _rows(out / "scores.csv")] == [str(folder / image.name)]

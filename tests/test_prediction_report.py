"""`defectmap report` on a predict or watch folder: built from its files alone, and it renders."""

import csv
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectmap import training
from defectmap.cli import main
from defectmap.prediction_report import complete_rows, rolling, write_prediction_report
from tests.conftest import tiny_config
from tests.test_report import CHROMIUM


@pytest.fixture
def predictions(tiny_dataset, tmp_path):
    checkpoint = training.fit(tiny_config("ae", tiny_dataset), tmp_path / "run", progress=False)
    out = tmp_path / "pred"
    assert main(["predict", str(checkpoint), str(tiny_dataset / "tiny" / "test"), "--out", str(out), "--quiet"]) == 0
    (tiny_dataset / "tiny" / "test" / "broken.png").write_bytes(b"not an image")  # a second run lists it as an error
    assert main(["predict", str(checkpoint), str(tiny_dataset / "tiny" / "test"), "--out", str(out), "--quiet",
                 "--resume"]) == 1  # every image it tried was unreadable  # fmt: skip
    return out


def _scores(out) -> list[dict]:
    with (out / "scores.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_report_counts_what_scores_csv_says_and_shows_the_highest_and_borderline_images(predictions, capsys):
    assert main(["report", str(predictions)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {predictions / 'report.html'}"
    page = (predictions / "report.html").read_text()
    rows = _scores(predictions)
    defects = sum(r["decision"] == "defect" for r in rows)
    regions = sum(int(r["regions"]) for r in rows)
    assert (
        f"{len(rows)} images scored: {defects} defect ({100 * defects / len(rows):.1f}%), {len(rows) - defects} good"
        in page
    )
    assert f"; 1 unreadable; {regions} predicted defect regions" in page and "broken.png" in page
    assert not re.search(r"(src|href)=\"https?://", page) and page.count("<svg") == 2
    highest, borderline = page.split("<h2>Closest to the threshold")
    shown = re.findall(r'title="([^"]+)"', highest)
    order = sorted(rows, key=lambda r: -float(r["normalised_score"]))
    assert shown == [r["path"] for r in order]  # 7 images, under the gallery size: all of them, highest first
    assert 'title="' not in borderline  # none left over for the second gallery


def test_a_gallery_of_two_each_and_a_missing_image(predictions):
    by_score = sorted(_scores(predictions), key=lambda r: -float(r["normalised_score"]))
    Path(by_score[0]["path"]).unlink()  # deleted since it was scored: its card shows the map on grey
    Image.new("RGB", (9, 5)).save(by_score[1]["path"])  # replaced by an image of another size: the same
    page = write_prediction_report(predictions, gallery_size=2).read_text()
    highest, borderline = page.split("<h2>Closest to the threshold")
    assert re.findall(r'title="([^"]+)"', highest) == [by_score[0]["path"], by_score[1]["path"]]
    distance = sorted((abs(float(r["normalised_score"]) - 0.5), r["path"]) for r in by_score[2:])
    assert re.findall(r'title="([^"]+)"', borderline) == [path for _, path in distance[:2]]
    assert page.count('<img alt="') == 4


def test_a_row_being_written_is_left_out(predictions):
    text = (predictions / "scores.csv").read_text()
    (predictions / "scores.csv").write_text(text + "/a/torn/row.png,0.1")  # a watcher mid-write
    assert len(complete_rows(predictions / "scores.csv")) == len(text.splitlines()) - 1
    assert "torn" not in write_prediction_report(predictions).read_text()


def test_rolling_is_the_mean_of_the_last_window_values():
    values = np.random.default_rng(0).random(23)
    expected = [values[max(0, i - 4) : i + 1].mean() for i in range(23)]
    np.testing.assert_allclose(rolling(values, 5), expected)


def test_a_folder_without_a_run_or_predictions_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no model.ckpt or scores.csv in" in err and len(err.splitlines()) == 1
    (tmp_path / "scores.csv").write_text("path,score\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "has no normalised_score, decision, map, mask, regions column" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium chromium-driver)")
def test_the_predictions_report_renders_in_headless_chromium(predictions, tmp_path):
    page = write_prediction_report(predictions)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    result = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert 'data-status="ok"' in result.stdout, result.stderr[-2000:]
    assert 'data-images="7"' in result.stdout

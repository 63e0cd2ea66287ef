"""The HTML report: self-contained, and it renders in headless Chromium with its table and images."""

import re
import shutil
import subprocess

import pytest

from defectmap import training
from defectmap.cli import main
from tests.conftest import tiny_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    from defectmap.data.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("report")
    write_demo_dataset(root / "data", category="tiny", size=48, n_train=8, n_test_good=3, n_per_defect=2)
    checkpoint = training.fit(tiny_config("ae", root / "data", epochs=2), root / "run", progress=False)
    assert main(["test", str(checkpoint), "--report", "--quiet"]) == 0
    return root / "run" / "report.html"


def test_report_is_self_contained(report_page):
    page = report_page.read_text()
    assert not re.search(r"(src|href)=\"https?://", page), "the report must work offline"
    assert "<table>" in page and page.count("<svg") == 4  # ROC, PR, PRO, histogram
    assert page.count('<img alt="') == 9  # every test image in the gallery
    assert "good parts rejected" in page and "defects missed" in page
    assert "The 2 good images it was set on promise about 1.0 of 3 good rejected, at most" in page
    assert "Outlined at the pixel threshold (as in regions.csv):" in page  # evaluate's region figures in words
    assert "<th>defect type</th>" in page
    assert (report_page.parent / "metrics.json").is_file()


def test_report_sentences_keep_their_case():
    from defectmap.outputs import EXCEEDED
    from defectmap.report import _sentence

    assert _sentence(EXCEEDED).startswith("More good parts rejected than promised: the test's")
    assert _sentence(EXCEEDED).endswith("(`threshold --good DIR`).")  # str.capitalize would give "dir"


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium chromium-driver)")
def test_report_renders_in_headless_chromium(report_page, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    result = subprocess.run([CHROMIUM, *flags, "--dump-dom", report_page.as_uri()], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    dom = result.stdout
    assert 'data-status="ok"' in dom, result.stderr[-2000:]  # the page's script ran and every image decoded
    assert 'data-images="9"' in dom
    assert "<table>" in dom and "image_auroc" in dom

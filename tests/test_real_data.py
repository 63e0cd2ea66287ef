"""Slow checks on the real Magnetic Tile data (../shared/data, or $DEFECTMAP_DATA): `pytest -m slow`."""

import os
from pathlib import Path

import pytest

from defectmap import engine, training
from defectmap.config import build_config
from defectmap.data.mvtec import open_category

DATA = Path(os.environ.get("DEFECTMAP_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "magnetic_tile").is_dir(), reason=f"no magnetic_tile under {DATA}"),
]


def test_magnetic_tile_layout_and_original_sizes():
    data = open_category(build_config("ae", None, [], root=str(DATA), category="magnetic_tile").data)
    assert len(data.train) + len(data.val) == 761 and len(data.val) == 76
    assert len(data.test) == 191 + 392 and data.has_masks


def test_ae_learns_something_on_magnetic_tile(tmp_path):
    sets = ["data.image_size=64", "train.epochs=8", "train.patience=0", "train.device=cpu"]
    cfg = build_config("ae", None, sets, root=str(DATA), category="magnetic_tile")
    detector = engine.load(training.fit(cfg, tmp_path, progress=False))
    report = engine.evaluate(detector, open_category(detector.config.data), progress=False)
    # The AE baseline is weak on this data (about 0.6 at 128-256 px, see README) but clearly above chance.
    assert report["image_auroc"] > 0.55 and report["pixel_auroc"] > 0.55

"""The Python API's `predict` on frames in memory: the same rows as from the image files, in input order."""

import numpy as np
import pytest
import torch
from PIL import Image

from defectmap import engine, training
from defectmap.data.mvtec import open_category
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    from defectmap.data.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("engine")
    write_demo_dataset(root / "data", category="tiny", size=40, n_train=8, n_test_good=2, n_per_defect=1)
    return engine.load(training.fit(tiny_config("ae", root / "data"), root / "run", progress=False), device="cpu")


def test_frames_in_memory_score_as_their_files(detector):
    paths = [s.path for s in open_category(detector.config.data).test]
    from_files = list(engine.predict(detector, paths, progress=False))
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    from_frames = list(engine.predict(detector, frames, progress=False))
    assert [r["index"] for r in from_frames] == list(range(len(paths)))
    assert all(r["path"] is None for r in from_frames) and [r["path"] for r in from_files] == paths
    for a, b in zip(from_files, from_frames, strict=True):
        assert a["score"] == b["score"] and a["defective"] == b["defective"]
        np.testing.assert_array_equal(a["map"], b["map"])
    # One frame, a PIL image, a 4-D batch and float pixels give the same scores.
    [one] = engine.predict(detector, frames[1], progress=False)
    [pil] = engine.predict(detector, Image.open(paths[1]), progress=False)
    batch = list(engine.predict(detector, np.stack(frames[:2]), progress=False))
    [floats] = engine.predict(detector, frames[1] / 255.0, progress=False)
    assert one["score"] == pil["score"] == batch[1]["score"] == from_files[1]["score"]
    assert floats["score"] == pytest.approx(from_files[1]["score"], rel=1e-5)


def test_a_bad_frame_is_an_error_row_and_the_others_are_scored(detector):
    frame = np.full((40, 40, 3), 128, np.uint8)
    rows = list(engine.predict(detector, [frame, frame.astype(np.float32), frame], progress=False))
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert "error" not in rows[0] and "error" not in rows[2] and rows[0]["score"] == rows[2]["score"]
    assert "divide 8-bit values by 255" in rows[1]["error"] and rows[1]["path"] is None
    [tensor] = engine.predict(detector, torch.zeros(3, 40, 40), progress=False)  # one image, not three rows
    assert "not a tensor" in tensor["error"]


def test_an_exported_model_scores_frames_too(detector, tmp_path):
    from defectmap.export import export

    frame = (np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8)
    exported = engine.load(export(detector, tmp_path / "model.onnx"), device="cpu")
    [a] = engine.predict(detector, frame, progress=False)
    [b] = engine.predict(exported, frame, progress=False)
    assert b["score"] == pytest.approx(a["score"], rel=1e-4) and b["map"].shape == (30, 50)

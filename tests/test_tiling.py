"""Tiling: windows cover the image, an image of tile size reproduces the untiled map, stitching is exact."""

import numpy as np
import pytest
import torch

from defectmap import engine, training
from defectmap.config import apply_overrides
from defectmap.data.dataset import ImageDataset
from defectmap.data.mvtec import Sample
from defectmap.data.transforms import tile_boxes
from defectmap.errors import ConfigError
from defectmap.models.base import AnomalyModel, Output
from tests.conftest import tiny_config, write_image


@pytest.mark.parametrize("height,width", [(256, 256), (300, 700), (100, 50), (513, 257)])
def test_tile_boxes_cover_the_image(height, width):
    covered = np.zeros((height, width), dtype=int)
    for y0, y1, x0, x1 in tile_boxes(height, width, 128, 32):
        assert y1 - y0 == min(128, height) and x1 - x0 == min(128, width)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1


def test_tile_of_image_size_reproduces_the_untiled_map(tiny_dataset, tmp_path):
    detector = engine.load(training.fit(tiny_config("ae", tiny_dataset), tmp_path / "run", progress=False))
    path = write_image(tmp_path / "x.png", np.random.default_rng(0).random((64, 64, 3)))
    whole = next(engine.infer(detector.model, ImageDataset([Sample(path, 0)], 32), 4, detector.device))
    tiled = next(engine.infer(detector.model, ImageDataset([Sample(path, 0)], 32, tile=64), 4, detector.device))
    assert tiled["score"] == whole["score"]
    np.testing.assert_array_equal(tiled["map"], whole["map"])


class ColumnModel(AnomalyModel):
    """A map equal to the red channel, so stitched tiles must reproduce the image's red channel exactly."""

    def forward(self, images):
        maps = images[:, 0]
        return Output(maps.flatten(1).amax(1), maps)


def test_stitched_map_is_exact_for_a_local_model(tmp_path):
    image = np.random.default_rng(1).random((90, 150, 3)).astype(np.float32)
    path = tmp_path / "big.tiff"
    from PIL import Image

    Image.fromarray((image * 255).astype(np.uint8)).save(path)
    expected = np.asarray(Image.open(path), dtype=np.float32)[:, :, 0] / 255
    dataset = ImageDataset([Sample(path, 0)], 40, tile=40, tile_overlap=10)
    result = next(engine.infer(ColumnModel(), dataset, 3, torch.device("cpu")))
    np.testing.assert_allclose(result["map"], expected, atol=1e-6)
    assert result["score"] == pytest.approx(expected.max(), abs=1e-6)


@pytest.mark.parametrize("method", ["ae", "daad"])
def test_position_normalisation_is_fitted_in_training_and_refuses_tiles(method, tiny_dataset, tmp_path):
    cfg = tiny_config(method, tiny_dataset)
    apply_overrides(cfg, {"postprocess": {"normalize": True}})
    detector = engine.load(training.fit(cfg, tmp_path / "run", progress=False), device="cpu")
    expected = detector.model.error_filter.expected
    assert expected.shape == (32, 32) and bool((expected > 0).all())  # fitted on validation normals, saved
    path = write_image(tmp_path / "x.png", np.random.default_rng(0).random((64, 64, 3)))
    assert np.isfinite(next(engine.predict(detector, [Sample(path, 0)], progress=False))["map"]).all()
    detector.config.data.tile = 64
    with pytest.raises(ConfigError, match="--tile cannot be used with postprocess.normalize"):
        next(engine.predict(detector, [Sample(path, 0)], progress=False))

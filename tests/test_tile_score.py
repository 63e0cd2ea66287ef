"""data.tile_score: a tiled image's score is its highest window or its stitched map's maximum; `auto` chooses on the
validation normals with synthetic defects, and the thresholds are set by the chosen rule on the same pass."""

import numpy as np
import pytest
import torch
from PIL import Image

from defectmap import calibration, engine, training
from defectmap.data import tiles as tiles_module
from defectmap.data.dataset import ImageDataset
from defectmap.data.mvtec import Sample, open_category
from defectmap.data.transforms import tile_boxes
from defectmap.models.base import AnomalyModel, Output
from tests.conftest import tiled_config, write_image


class WindowMeanModel(AnomalyModel):
    """The red channel as map, each window scored by its mean: the highest window and the map's maximum differ."""

    def forward(self, images):
        maps = images[:, 0]
        return Output(maps.flatten(1).mean(1), maps)


@pytest.mark.parametrize("rule", ["window", "map", "auto"])
def test_a_tiled_image_is_scored_by_its_highest_window_or_its_stitched_map(rule, tmp_path):
    image = np.random.default_rng(2).random((90, 150, 3)).astype(np.float32)
    path = write_image(tmp_path / "big.png", image)
    dataset = ImageDataset([Sample(path, 0)], 40, tile=40, tile_overlap=10, tile_score=rule)
    result = next(engine.infer(WindowMeanModel(), dataset, 3, torch.device("cpu")))
    red = np.asarray(Image.open(path), dtype=np.float32)[:, :, 0] / 255
    windows = [red[y0:y1, x0:x1].mean() for y0, y1, x0, x1 in tile_boxes(90, 150, 40, 10)]
    # auto where training chose nothing (a model trained on whole images): the highest window, as before the choice
    expected = red.max() if rule == "map" else max(windows)
    assert result["score"] == pytest.approx(expected, abs=1e-5) and red.max() > max(windows) + 0.1


class GreyDistanceModel(AnomalyModel):
    """Maps how far each pixel is from grey; scores each window by that (`informative="window"`) or by nothing."""

    def __init__(self, informative: str):
        super().__init__()
        self.informative = informative

    def forward(self, images):
        maps = (images - 0.5).abs().mean(1)
        if self.informative == "window":
            return Output(maps.flatten(1).amax(1), torch.zeros_like(maps))
        return Output(torch.zeros(len(images)), maps)


def _grey_images(folder, count=6):
    return [Sample(write_image(folder / f"{i}.png", np.full((60, 70, 3), 0.5)), 0) for i in range(count)]


class CountingModel(GreyDistanceModel):
    """GreyDistanceModel scoring by its map, counting the windows it scores."""

    def __init__(self):
        super().__init__("map")
        self.windows = 0

    def forward(self, images):
        self.windows += len(images)
        return super().forward(images)


def test_auto_sets_the_thresholds_on_the_pass_that_chose_the_rule(tmp_path):
    cfg = tiled_config("ae", tmp_path)  # a model trained on whole images, first calibrated for tiles: auto chooses
    rng = np.random.default_rng(0)
    samples = [Sample(write_image(tmp_path / f"{i}.png", 0.5 + rng.uniform(-0.2, 0.2) * rng.random((60, 70, 3))), 0)
               for i in range(6)]  # fmt: skip
    model = CountingModel()
    detector = engine.Detector(model, cfg, {}, torch.device("cpu"), {})
    result = calibration.recalibrate(detector, 0.2, good=samples)
    assert cfg.data.tile_score == result["tile_score"] == "map"
    assert model.windows == 2 * len(samples) * len(tile_boxes(60, 70, 24, 8))  # the probe only: normals scored once
    scored = engine.scoring_set(cfg, samples)
    reference = calibration.calibrate_on_validation(model, scored, 4, torch.device("cpu"), 0.2)
    assert {key: result[key] for key in reference} == reference


@pytest.mark.parametrize("informative", ["window", "map"])
def test_auto_tile_score_keeps_the_rule_that_tells_synthetic_defects_from_normals(informative, tmp_path):
    cfg = tiled_config("ae", tmp_path)
    samples = _grey_images(tmp_path / "val")
    aurocs, normals = calibration.choose_tile_score(cfg, GreyDistanceModel(informative), samples, torch.device("cpu"))
    other = "map" if informative == "window" else "window"
    assert cfg.data.tile_score == informative and aurocs[other] == 0.5 and aurocs[informative] > 0.8
    assert len(normals) == len(samples) and all(m.shape == (60, 70) for _, m in normals)


def test_the_tiled_probe_is_each_normal_as_scored_and_a_copy_with_a_defect_fixed_per_seed(tmp_path):
    cfg = tiled_config("ae", tmp_path)
    samples = _grey_images(tmp_path / "val", 3)
    probe = tiles_module.TiledProbe(samples, cfg.data, 5)
    scored = engine.scoring_set(cfg, samples)
    assert len(probe) == 6 and [int(probe[i]["label"]) for i in range(6)] == [0, 0, 0, 1, 1, 1]
    for index in range(3):
        assert torch.equal(probe[index]["tiles"], scored[index]["tiles"])
        anomalous = probe[3 + index]["tiles"]
        assert torch.equal(probe[3 + index]["boxes"], scored[index]["boxes"])
        assert not torch.equal(anomalous, scored[index]["tiles"])  # a defect in some window
        assert torch.equal(anomalous, tiles_module.TiledProbe(samples, cfg.data, 5)[3 + index]["tiles"])
    assert not torch.equal(probe[3]["tiles"], tiles_module.TiledProbe(samples, cfg.data, 6)[3]["tiles"])


@pytest.mark.parametrize("method", ["daad", "pmb"])
def test_memory_models_train_on_tiles_and_score_images_by_the_rule_they_chose(method, tiny_dataset, tmp_path):
    cfg = tiled_config(method, tiny_dataset)
    detector = engine.load(training.fit(cfg, tmp_path / "run", progress=False), device="cpu")
    rule = detector.config.data.tile_score
    assert rule in ("window", "map")
    test = open_category(cfg.data).test
    rows = list(engine.predict(detector, test, progress=False))
    assert len(rows) == len(test) and all(np.isfinite(row["map"]).all() for row in rows)
    assert detector.calibration["tile_score"] == rule  # the threshold was set by the rule
    detector.config.data.tile_score = "window" if rule == "map" else "map"  # the other rule: its threshold is flagged
    with pytest.warns(UserWarning, match="threshold was set on 24-pixel tiles.* and these are scored as 24-pixel"):
        other = [row["score"] for row in engine.predict(detector, test, progress=False)]
    by_map = other if rule == "window" else [row["score"] for row in rows]
    assert by_map == pytest.approx([float(row["map"].max()) for row in rows])

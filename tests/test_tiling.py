"""Tiling: windows cover the image, an image of tile size reproduces the untiled map, stitching is exact; training on
tiles learns and calibrates on the windows that test and predict score."""

import multiprocessing
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from defectmap import engine, training
from defectmap.checkpoint import load_checkpoint
from defectmap.cli import main
from defectmap.config import apply_overrides
from defectmap.data import tiles as tiles_module
from defectmap.data.dataset import ImageDataset
from defectmap.data.examples import write_synthetic_examples
from defectmap.data.mvtec import Sample, open_category
from defectmap.data.tiles import TileDataset, foregrounds_as_trained
from defectmap.data.transforms import resize_mask, tile_boxes
from defectmap.errors import ConfigError, DataError
from defectmap.models.base import AnomalyModel, Output
from defectmap.resume import epoch_order
from defectmap.threshold import threshold_at_false_reject
from tests.conftest import tiled_config, tiny_config, write_image


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
    with pytest.raises(ConfigError, match="data.tile cannot be used with postprocess.normalize"):
        next(engine.predict(detector, [Sample(path, 0)], progress=False))


@pytest.mark.parametrize("cache", [True, False])
def test_tile_dataset_items_are_the_windows_scoring_cuts(cache, tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", np.random.default_rng(i).random(shape + (3,)))
             for i, shape in enumerate([(90, 150), (30, 30)])]  # fmt: skip
    samples = [Sample(path, 0) for path in paths]
    tiles = TileDataset(samples, 20, 40, 10, cache=cache)
    scored = ImageDataset(samples, 20, tile=40, tile_overlap=10)
    expected = [(i, box) for i in range(2) for box in scored[i]["boxes"].tolist()]
    assert len(tiles) == len(expected) == len(tile_boxes(90, 150, 40, 10)) + 1
    for k, (i, (y0, y1, x0, x1)) in enumerate(expected):
        item = tiles[k]
        first = sum(len(scored[j]["boxes"]) for j in range(i))
        torch.testing.assert_close(item["image"], scored[i]["tiles"][k - first], rtol=0, atol=0)
        assert item["size"].tolist() == [y1 - y0, x1 - x0] and item["label"] == 0 and not item["mask"].any()


def test_training_on_tiles_sets_the_threshold_on_what_test_and_predict_score(tiny_dataset, tmp_path, recwarn):
    cfg = tiled_config("ae", tiny_dataset)
    detector = engine.load(training.fit(cfg, tmp_path / "run", progress=False), device="cpu")
    assert detector.config.data.tile == 24 and detector.calibration["tile"] == 24
    assert detector.config.data.tile_score in ("window", "map")  # data.tile_score=auto chose one, the checkpoint has it
    val = open_category(cfg.data).val
    scored = engine.scoring_set(detector.config, val)
    scores = [r["score"] for r in engine.infer(detector.model, scored, 4, detector.device)]
    assert detector.calibration["threshold"] == threshold_at_false_reject(np.array(scores), 0.01)
    rows = list(engine.predict(detector, val, progress=False))
    assert [row["score"] for row in rows] == pytest.approx(scores, rel=1e-6)
    assert not [w for w in recwarn if "threshold was set on" in str(w.message)]
    detector.config.data.tile = 0  # the scale it was not calibrated for: the decisions are flagged
    set_on = "24-pixel tiles" + (" (by the stitched map's maximum)" if detector.config.data.tile_score == "map" else "")
    with pytest.warns(UserWarning, match=re.escape(f"threshold was set on {set_on} and these are scored as whole")):
        list(engine.predict(detector, val, progress=False))
    report = engine.evaluate(detector, engine.test_split(detector), progress=False)
    assert [note for note in report["notes"] if note.startswith(f"the threshold was set on {set_on} and")]
    assert report["tiling"] is None
    detector.config.data.tile = 24
    report = engine.evaluate(detector, engine.test_split(detector), progress=False)
    rule = {"window": "highest window", "map": "stitched map maximum"}[detector.config.data.tile_score]
    assert report["tiling"] == {"tile": 24, "tile_overlap": 8, "image_score": rule}


def test_threshold_tile_recalibrates_and_scores_so_from_then_on(tiny_dataset, tmp_path, capsys):
    checkpoint = training.fit(tiny_config("ae", tiny_dataset), tmp_path / "run", progress=False)
    assert main(["threshold", str(checkpoint), "--tile", "36", "--quiet"]) == 0
    assert "scored as 36-pixel tiles) saved in" in capsys.readouterr().out
    payload = load_checkpoint(checkpoint)
    assert payload["config"]["data"]["tile"] == 36 and payload["calibration"]["tile"] == 36
    # trained on whole images, its image score on tiles was chosen now, and its threshold set with that rule
    assert payload["config"]["data"]["tile_score"] == payload["calibration"]["tile_score"] in ("window", "map")
    assert main(["info", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    rule = {"window": "its highest window's score", "map": "the maximum of its stitched map"}
    assert "input 32² from 36-pixel tiles (overlap 32)\n" in out
    assert f"  image score:  {rule[payload['config']['data']['tile_score']]} (data.tile_score)\n" in out


def _foregrounds(root, folder):
    """A foreground mask per training image of `tiny`: its centre square (in every tile of 24 with overlap 8)."""
    for path in sorted((root / "tiny" / "train" / "good").glob("*.png")):
        mask = np.zeros((40, 40), dtype=np.float32)
        mask[14:26, 12:28] = 1
        write_image(folder / path.name, mask)
    return folder


def test_foreground_masks_are_cut_into_the_tiles_training_sees(tiny_dataset, tmp_path):
    folder = _foregrounds(tiny_dataset, tmp_path / "fg")
    train = open_category(tiny_config("ae", tiny_dataset).data).train
    tiles = TileDataset(train, 32, 24, 8, cache=False)
    masks = foregrounds_as_trained(str(folder), tiles)
    assert len(masks) == len(tiles) == 4 * len(train) and all(mask.dtype == torch.bool for mask in masks)
    full = np.zeros((40, 40), dtype=bool)
    full[14:26, 12:28] = True
    for index, (_, (y0, y1, x0, x1)) in enumerate(tiles.windows):
        assert torch.equal(masks[index], resize_mask(full[y0:y1, x0:x1], 32).bool())
    assert masks[0][-1, -1] and not masks[0][0, 0] and masks[3][0, 0] and not masks[3][-1, -1]  # each its own window
    whole = foregrounds_as_trained(str(folder), ImageDataset(train, 32))
    assert len(whole) == len(train) and torch.equal(whole[0].bool(), resize_mask(full, 32).bool())
    (folder / train[1].path.name).unlink()
    with pytest.raises(DataError, match=f"no foreground mask for {train[1].path.name} in "):
        foregrounds_as_trained(str(folder), tiles)


def test_choosing_the_map_filters_on_tiles_leaves_normalisation_out(tiny_dataset, tmp_path, capsys):
    cfg = tiled_config("ae", tiny_dataset)
    apply_overrides(cfg, {"postprocess": {"choose": "synthetic"}})
    detector = engine.load(training.fit(cfg, tmp_path / "run"), device="cpu")
    out = capsys.readouterr().out
    assert "normalize=False hee=False" in out and "normalize=False hee=True" in out and "normalize=True" not in out
    assert detector.config.postprocess.normalize is False and detector.calibration["tile"] == 24


def test_tiles_of_a_real_anomaly_carry_their_window_of_its_mask(tmp_path):
    image = write_image(tmp_path / "bad.png", np.random.default_rng(0).random((60, 90, 3)))
    mask = np.zeros((60, 90), dtype=bool)
    mask[5:15, 70:85] = True  # in the top-right window only
    mask_path = write_image(tmp_path / "bad_mask.png", mask.astype(np.float32))
    tiles = TileDataset([Sample(image, 1, mask_path=mask_path)], 20, 40, 10, cache=False)
    boxes = tile_boxes(60, 90, 40, 10)
    assert len(tiles) == len(boxes) and tiles.source(len(tiles) - 1) == 0
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        item, window = tiles[k], mask[y0:y1, x0:x1]
        expected = torch.nn.functional.interpolate(torch.from_numpy(window).float()[None, None], (20, 20))[0, 0]
        torch.testing.assert_close(item["mask"], expected, rtol=0, atol=0)
        assert int(item["label"]) == int(window.any())
    assert 0 < sum(int(tiles[k]["label"]) for k in range(len(tiles))) < len(tiles)


def test_prn_learns_from_the_tiles_of_its_real_anomalies(tiny_dataset, tmp_path):
    foregrounds = str(_foregrounds(tiny_dataset, tmp_path / "fg"))  # extended anomalies land on their tiles' windows
    cfg = tiled_config("prn", tiny_dataset, anomalies=2, foreground_dir=foregrounds)
    detector = engine.load(training.fit(cfg, tmp_path / "run", progress=False), device="cpu")
    assert detector.info["training_anomalies"]["count"] == 2 and detector.calibration["tile"] == 24
    report = engine.evaluate(detector, engine.test_split(detector), progress=False)
    assert report["test_images"] == 7 - 2 and report["pixel_auroc"] is not None


def test_synth_shows_the_tiles_training_cuts(tiny_dataset, tmp_path):
    cfg = tiled_config("prn", tiny_dataset)
    paths = write_synthetic_examples(cfg.data, tmp_path / "synth", count=3, progress=False)
    train = open_category(cfg.data).train
    tiles = TileDataset(train, 32, 24, 8, cache=False)
    step = len(tiles) // 3
    for i, path in enumerate(paths):
        panel = np.asarray(Image.open(path), dtype=np.float32) / 255
        assert panel.shape == (32, 96, 3)  # normal | anomalous | mask, each a tile at the model input
        expected = tiles[i * step]["image"].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(panel[:, :32], expected, atol=1 / 255)
        assert path.name.endswith(f"_{train[tiles.source(i * step)].path.stem}.png")
    # With real anomalies, the extended ones land on the foreground masks (data.foreground_dir) cut as the tiles are.
    folder = _foregrounds(tiny_dataset, tmp_path / "fg")
    (folder / train[1].path.name).unlink()
    with pytest.raises(DataError, match=f"no foreground mask for {train[1].path.name} in "):
        write_synthetic_examples(replace(cfg.data, anomalies=1, foreground_dir=str(folder)), tmp_path / "s2", count=1)


def test_a_tile_cache_too_large_for_this_machine_is_flagged(monkeypatch, tmp_path, recwarn):
    path = write_image(tmp_path / "big.png", np.random.default_rng(0).random((90, 150, 3)))
    monkeypatch.setattr(tiles_module.os, "sysconf", lambda name: 1024 if name == "SC_PHYS_PAGES" else 4096)  # 4 MiB
    with pytest.warns(UserWarning, match="keeping about 15 tiles in memory needs about 3 MiB of this machine's 4 MiB"):
        TileDataset([Sample(path, 0)], 128, 40, 10)
    recwarn.clear()
    TileDataset([Sample(path, 0)], 128, 40, 10, cache=False)  # nothing kept, nothing to say
    TileDataset([Sample(path, 0)], 8, 40, 10)  # 15 tiles of 8² fit in a quarter of 4 MiB
    assert not [w for w in recwarn if "tiles in memory" in str(w.message)]


def test_tiles_read_in_order_or_in_training_order_decode_each_image_once(monkeypatch, tmp_path):
    count = 3 * TileDataset.POOL  # more images than are kept decoded
    paths = [write_image(tmp_path / f"{i}.png", np.random.default_rng(i).random((50, 70, 3))) for i in range(count)]
    calls = []
    real = tiles_module.sample_image
    monkeypatch.setattr(tiles_module, "sample_image", lambda sample, limit: calls.append(sample) or real(sample, limit))
    tiles = TileDataset([Sample(path, 0) for path in paths], 8, 30, 10, cache=False)
    assert len(tiles) == 6 * count

    def decodes(order, dataset=tiles):  # from nothing kept
        dataset._decoded.clear()
        calls.clear()
        [dataset[k] for k in order]
        return len(calls)

    assert decodes(range(len(tiles))) == count  # validation, calibration: in order
    orders = [tiles.epoch_order(seed=3, epoch=epoch) for epoch in (0, 1)]
    for order in orders:
        assert sorted(order) == list(range(len(tiles))) and decodes(order) == count  # training: image by image
        assert len({tiles.source(k) for k in order[:8]}) > 2  # while a batch still mixes images
    assert orders[0] != orders[1] and orders[0] == tiles.epoch_order(seed=3, epoch=0)
    assert decodes(epoch_order(len(tiles), 3, 0)) > 2 * count  # a plain shuffle decodes for almost every tile
    cached = TileDataset([Sample(path, 0) for path in paths], 8, 30, 10)
    assert cached.epoch_order(3, 0) == epoch_order(len(cached), 3, 0)  # kept tiles: the usual shuffle
    monkeypatch.setattr(tiles_module.os, "sysconf", lambda name: 512 if name == "SC_PHYS_PAGES" else 4096)  # 2 MiB
    small = TileDataset([Sample(path, 0) for path in paths], 8, 30, 10, cache=False)
    assert small.pool == 3  # a 16th of the memory holds three decoded 50x70 images (float32)
    assert decodes(small.epoch_order(3, 0), small) == count


def test_training_on_tiles_without_the_cache_follows_their_epoch_order(tiny_dataset, tmp_path, monkeypatch):
    calls = []
    real = TileDataset.epoch_order
    monkeypatch.setattr(
        TileDataset, "epoch_order", lambda self, *args: calls.append((len(self), *args)) or real(self, *args)
    )
    cfg = tiled_config("ae", tiny_dataset, cache=False)
    apply_overrides(cfg, {"train": {"epochs": 2, "seed": 5}})
    training.fit(cfg, tmp_path / "run", progress=False)
    tiles = 4 * len(open_category(cfg.data).train)
    assert calls == [(tiles, 5, 0, 4, 0), (tiles, 5, 1, 4, 0)]  # seed, epoch, batch size, data.num_workers


def test_dataloader_workers_each_decode_only_the_images_dealt_to_them(monkeypatch, tmp_path):
    count = 24
    paths = [write_image(tmp_path / f"{i}.png", np.random.default_rng(i).random((50, 70, 3))) for i in range(count)]
    decodes = multiprocessing.Value("i", 0)  # counted in the worker processes too (forked)
    real = tiles_module.sample_image

    def counted(sample, limit):
        with decodes.get_lock():
            decodes.value += 1
        return real(sample, limit)

    monkeypatch.setattr(tiles_module, "sample_image", counted)
    tiles = TileDataset([Sample(path, 0) for path in paths], 8, 30, 10, cache=False)
    tiles.pool = 2  # 12 pools of 12 tiles: 6 for each of two workers, 18 batches of 4 each
    assert tiles.epoch_order(3, 0, 4, 0) == tiles.epoch_order(3, 0)  # no worker: the one-process order
    order = tiles.epoch_order(3, 0, 4, 2)
    assert sorted(order) == list(range(len(tiles))) and order == tiles.epoch_order(3, 0, 4, 2)
    batches = [order[start : start + 4] for start in range(0, len(order), 4)]
    images = [{tiles.source(k) for batch in batches[worker::2] for k in batch} for worker in (0, 1)]
    assert not images[0] & images[1] and len(images[0] | images[1]) == count  # batch i goes to worker i % 2

    def decoded(order):  # from nothing kept (the workers start with a copy of what this process keeps)
        tiles._decoded.clear()
        decodes.value = 0
        list(DataLoader(tiles, batch_size=4, sampler=order, num_workers=2))
        return decodes.value

    assert decoded(order) == count
    assert decoded(tiles.epoch_order(3, 0)) > 1.5 * count  # not dealt out, each worker decodes nearly every image

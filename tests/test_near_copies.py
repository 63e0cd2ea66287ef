"""Near-copies: another shot of one part is found, another part is not, and the few-shot hold-out can drop them."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from defectmap import evaluate, load, training
from defectmap.cli import main
from defectmap.config import DataConfig, apply_overrides, build_config
from defectmap.data import near_copies
from defectmap.data.mvtec import open_category
from defectmap.data.near_copies import signatures, similarities, similarity
from defectmap.errors import ConfigError, DataError
from tests.conftest import tiny_config, write_image


def _texture(rng, shape=(330, 420)):
    pixels = ndimage.gaussian_filter(rng.random(shape), 2)
    return (pixels - pixels.min()) / (pixels.max() - pixels.min())


def _relit(tile):
    """Another shot of the same part: cropped a few pixels off, darker, and lit unevenly across."""
    return 0.1 + 0.8 * tile[6:326, 2:414] * np.linspace(0.4, 1.0, 412)[None, :]


def test_another_shot_of_one_part_is_similar_and_another_part_is_not(tmp_path):
    rng = np.random.default_rng(0)
    tile = _texture(rng)
    shots = [tile[:320, :410], _relit(tile), _texture(rng)]
    paths = [write_image(tmp_path / f"{i}.png", pixels) for i, pixels in enumerate(shots)]
    shot, other_shot, other_part = signatures(paths, max_pixels=10**8)
    assert similarity(shot, shot) == pytest.approx(1.0, abs=1e-3)
    assert similarity(shot, other_shot) > 0.7 and similarity(other_shot, shot) > 0.7
    assert similarity(shot, other_part) < 0.3


@pytest.fixture
def shots_of_parts(tmp_path):
    """`tmp_path/data/parts`: defective part A shot twice (`a1`, `a2`), parts B and C once, three good parts."""
    rng = np.random.default_rng(1)
    base = tmp_path / "data" / "parts"
    for i in range(3):
        write_image(base / "train" / "good" / f"{i}.png", _texture(rng))
        write_image(base / "test" / "good" / f"{i}.png", _texture(rng)[:320, :410])
    part_a = _texture(rng)
    mask = np.zeros((320, 410), np.float32)
    mask[100:140, 200:260] = 1
    shots = {"a1": part_a[:320, :410], "a2": _relit(part_a), "b": _texture(rng)[:320, :410],
             "c": _texture(rng)[:320, :410]}  # fmt: skip
    for name, pixels in shots.items():
        write_image(base / "test" / "scratch" / f"{name}.png", pixels)
        write_image(base / "ground_truth" / "scratch" / f"{name}_mask.png", mask)
    return tmp_path / "data"


def test_the_hold_out_drops_the_other_shots_of_a_drawn_part_only(shots_of_parts):
    outcomes = set()
    for seed in range(12):
        cfg = DataConfig(root=str(shots_of_parts), category="parts", anomalies=1, anomaly_seed=seed,
                         near_copy_similarity=0.7)  # fmt: skip
        category = open_category(cfg)
        [drawn] = [s.path.stem for s in category.anomalies]
        dropped = sorted(s.path.stem for s in category.near_copies)
        assert dropped == {"a1": ["a2"], "a2": ["a1"]}.get(drawn, [])  # B, C and the good parts stay
        assert len(category.test) == 7 - 1 - len(dropped)
        assert not {s.path for s in category.near_copies} & {s.path for s in category.test}
        record = category.anomaly_record()
        assert record["near_copy_similarity"] == 0.7 and record["near_copies"] == [
            str(s.path) for s in category.near_copies
        ]
        assert f"{len(dropped)} test images that are near-copies" in category.notes[-1]
        outcomes.add(bool(dropped))
    assert outcomes == {True, False}  # both kinds of draw were seen
    plain = open_category(DataConfig(root=str(shots_of_parts), category="parts", anomalies=1, anomaly_seed=0))
    assert plain.near_copies == [] and len(plain.test) == 6  # off by default: the protocol as before


def test_near_copy_similarity_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="data.near_copy_similarity must be in"):
        build_config("prn", None, ["data.near_copy_similarity=1.5"])


def test_the_similarity_matrix_is_the_pairwise_similarity_in_any_chunking(tmp_path):
    rng = np.random.default_rng(3)
    tiles = [_texture(rng) for _ in range(3)]
    shots = [tiles[0][:320, :410], _relit(tiles[0]), tiles[1], _relit(tiles[2]), tiles[2][:320, :410]]
    found = signatures([write_image(tmp_path / f"{i}.png", s) for i, s in enumerate(shots)], max_pixels=10**8)
    matrix = similarities(found[:2], found, chunk=2)
    assert matrix.shape == (2, 5)
    assert matrix == pytest.approx(similarities(found[:2], found), abs=1e-6)
    for i in range(2):
        for j in range(5):
            assert matrix[i, j] == pytest.approx(similarity(found[i], found[j]), abs=1e-6)
    assert np.diag(similarities(found, found)) == pytest.approx(1.0, abs=1e-3)
    assert (matrix[:, :2] > 0.7).all() and (matrix[:, 2:] < 0.3).all()  # one part's two shots, then other parts


@pytest.fixture
def seen_parts_data(tmp_path):
    """`tmp_path/data/parts`: eight good training images, two of them other shots of test parts (`shot_good` of
    good test image `g0`, `shot_defect` of defective test image `d0`), two good and two defective test images."""
    rng = np.random.default_rng(2)
    base = tmp_path / "data" / "parts"
    good_part, defect_part = _texture(rng), _texture(rng)
    write_image(base / "train" / "good" / "shot_good.png", _relit(good_part))
    write_image(base / "train" / "good" / "shot_defect.png", _relit(defect_part))
    for i in range(6):
        write_image(base / "train" / "good" / f"{i}.png", _texture(rng))
    write_image(base / "test" / "good" / "g0.png", good_part[:320, :410])
    write_image(base / "test" / "good" / "g1.png", _texture(rng)[:320, :410])
    mask = np.zeros((320, 410), np.float32)
    mask[100:140, 200:260] = 1
    for name, tile in (("d0", defect_part), ("d1", _texture(rng))):
        write_image(base / "test" / "scratch" / f"{name}.png", tile[:320, :410])
        write_image(base / "ground_truth" / "scratch" / f"{name}_mask.png", mask)
    return tmp_path / "data"


def test_unseen_parts_leaves_the_other_shots_of_test_parts_out_of_training(seen_parts_data):
    plain = open_category(DataConfig(root=str(seen_parts_data), category="parts", val_fraction=0.25))
    cfg = DataConfig(root=str(seen_parts_data), category="parts", val_fraction=0.25, unseen_parts=0.7)
    category = open_category(cfg)
    left_out = {s.path.stem for s in category.seen_parts}
    assert left_out == {"shot_good", "shot_defect"}
    assert not left_out & {s.path.stem for s in category.train + category.val}
    assert {s.path for s in category.train + category.val + category.seen_parts} == {
        s.path for s in plain.train + plain.val
    }
    assert category.test == plain.test  # the test set is the dataset's
    record = category.normals_record()
    assert record["unseen_parts"] == 0.7 and record["train"] + record["val"] == 6
    assert sorted(record["left_out_as_seen_parts"]) == sorted(str(s.path) for s in category.seen_parts)
    assert "2 good training and validation images that are near-copies of test images" in category.notes[-1]
    assert plain.seen_parts == [] and plain.normals_record()["unseen_parts"] == 0.0  # off by default


def test_unseen_parts_that_leave_nothing_to_train_on_are_refused(seen_parts_data):
    base = seen_parts_data / "parts"
    for path in (base / "train" / "good").glob("[0-9].png"):
        path.unlink()  # only the two shots of test parts remain
    with pytest.raises(DataError, match=r"data.unseen_parts=0.7 leaves 0 training .* raise the similarity"):
        open_category(DataConfig(root=str(seen_parts_data), category="parts", val_fraction=0.25, unseen_parts=0.7))


def test_train_images_draws_a_seeded_subset_and_keeps_the_validation_images(seen_parts_data):
    def opened(n, seed):
        return open_category(DataConfig(root=str(seen_parts_data), category="parts", val_fraction=0.25,
                                        train_images=n, split_seed=seed))  # fmt: skip

    drawn = []
    for seed in range(6):
        whole, part = opened(0, seed), opened(3, seed)
        assert len(part.train) == 3 and set(part.train) <= set(whole.train) and part.val == whole.val
        drawn.append(frozenset(s.path for s in part.train))
    assert drawn[0] == {s.path for s in opened(3, 0).train} and len(set(drawn)) > 1  # seeded, and seeds differ
    assert opened(3, 0).normals_record()["train_images"] == 3
    with pytest.raises(DataError, match="data.train_images=7, but parts has 6 good training images"):
        opened(7, 0)


def test_the_checkpoint_and_metrics_record_which_normals_trained_the_model(seen_parts_data, tmp_path, monkeypatch):
    cfg = tiny_config("ae", seen_parts_data, category="parts")
    apply_overrides(cfg, {"data": {"unseen_parts": 0.7}})
    ckpt = training.fit(cfg, tmp_path / "run", progress=False)
    used = torch.load(ckpt, weights_only=True)["training_normals"]
    assert sorted(Path(p).stem for p in used["left_out_as_seen_parts"]) == ["shot_defect", "shot_good"]
    detector = load(ckpt, device="cpu")
    report = evaluate(detector, open_category(detector.config.data), progress=False)
    assert report["training_normals"] == used and report["test_images"] == 4
    # `test` reads the test split alone: no images compared again, the record taken from the checkpoint
    monkeypatch.setattr(near_copies, "similarities", lambda *a, **k: pytest.fail("test compared images again"))
    assert main(["test", str(ckpt), "--out", str(tmp_path / "tested"), "--quiet"]) == 0
    tested = json.loads((tmp_path / "tested" / "metrics.json").read_text())
    assert tested["training_normals"] == used and tested["test_images"] == 4


@pytest.mark.parametrize("setting", ["data.unseen_parts=1.5", "data.unseen_parts=-0.1", "data.train_images=-1"])
def test_unseen_parts_and_train_images_out_of_range_are_refused(setting):
    with pytest.raises(ConfigError, match=setting.split("=")[0] + " must be"):
        build_config("ae", None, [setting])

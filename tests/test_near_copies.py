"""Near-copies: another shot of one part is found, another part is not, and the few-shot hold-out can drop them."""

import numpy as np
import pytest
from scipy import ndimage

from defectmap.config import DataConfig, build_config
from defectmap.data.mvtec import open_category
from defectmap.data.near_copies import signatures, similarity
from defectmap.errors import ConfigError
from tests.conftest import write_image


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

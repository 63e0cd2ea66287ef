"""Dataset layouts, image modes, mask pairing and the validation split."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from defectmap.config import DataConfig
from defectmap.data.demo import write_demo_dataset
from defectmap.data.images import image_from_memory, load_image, load_mask
from defectmap.data.mvtec import open_category
from defectmap.data.transforms import preprocess, resize_map
from defectmap.errors import DataError
from tests.conftest import write_image


def test_mvtec_layout_pairs_masks_by_name_and_splits_validation(tiny_dataset):
    data = open_category(DataConfig(root=str(tiny_dataset), category="tiny", val_fraction=0.25, split_seed=3))
    assert len(data.train) == 6 and len(data.val) == 2
    assert not {s.path for s in data.train} & {s.path for s in data.val}
    defective = [s for s in data.test if s.label == 1]
    assert len(defective) == 4 and len(data.test) == 7
    for sample in defective:
        assert sample.mask_path.name == f"{sample.path.stem}_mask.png"
        assert sample.mask_path.parent.name == sample.defect
    again = open_category(DataConfig(root=str(tiny_dataset), category="tiny", val_fraction=0.25, split_seed=3))
    assert [s.path for s in again.val] == [s.path for s in data.val]
    other = open_category(DataConfig(root=str(tiny_dataset), category="tiny", val_fraction=0.25, split_seed=4))
    assert [s.path for s in other.val] != [s.path for s in data.val]


def test_missing_mask_is_an_error_naming_the_file(tiny_dataset):
    (tiny_dataset / "tiny" / "ground_truth" / "stain" / "01_mask.png").unlink()
    with pytest.raises(DataError, match="01.png"):
        open_category(DataConfig(root=str(tiny_dataset), category="tiny"))


def test_without_ground_truth_image_metrics_only(tiny_dataset):
    import shutil

    shutil.rmtree(tiny_dataset / "tiny" / "ground_truth")
    data = open_category(DataConfig(root=str(tiny_dataset), category="tiny"))
    assert not data.has_masks
    assert any("image-level metrics only" in note for note in data.notes)


def test_empty_or_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_category(DataConfig(root=str(tmp_path), category="nothing"))
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found in .*train/good"):
        open_category(DataConfig(root=str(tmp_path), category="empty"))


def test_a_missing_category_names_the_closest_one_and_the_others(tiny_dataset, tmp_path):
    (tiny_dataset / "other" / "train").mkdir(parents=True)
    (tiny_dataset / "not_a_category").mkdir()  # no train/: not listed
    with pytest.raises(DataError) as typo:
        open_category(DataConfig(root=str(tiny_dataset), category="tinny"))
    assert str(typo.value).endswith(f"does not exist; did you mean tiny? categories under {tiny_dataset}: other, tiny")
    with pytest.raises(DataError) as unrelated:
        open_category(DataConfig(root=str(tiny_dataset), category="bottle"))
    assert str(unrelated.value).endswith(f"does not exist; categories under {tiny_dataset}: other, tiny")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(DataError, match="bottle does not exist; expected MVTec AD layout"):  # no category folders
        open_category(DataConfig(root=str(tmp_path / "empty_root"), category="bottle"))


def test_folder_format(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        write_image(tmp_path / "good" / f"{i}.png", rng.random((20, 30, 3)))
    write_image(tmp_path / "bad" / "x.png", rng.random((20, 30, 3)))
    write_image(tmp_path / "masks" / "x_mask.png", np.ones((20, 30)))
    cfg = DataConfig(
        format="folder",
        good_dir=str(tmp_path / "good"),
        defect_dir=str(tmp_path / "bad"),
        mask_dir=str(tmp_path / "masks"),
        val_fraction=0.25,
    )
    data = open_category(cfg)
    assert len(data.train) == 3 and len(data.val) == 1 and data.has_masks
    assert data.test[0].mask_path.name == "x_mask.png"
    assert data.test[0].defect == "bad"  # the defect folder's name is the type the per-type results show


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "LA"])
def test_image_modes_become_rgb_floats(tmp_path, mode):
    rgb = (np.random.default_rng(0).random((9, 13, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    image = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257) if mode == "I;16" else image.convert(mode)
    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    image.save(path)
    array = load_image(path)
    assert array.shape == (9, 13, 3) and array.dtype == np.float32
    assert array.min() >= 0.0 and array.max() <= 1.0
    if mode == "I;16":
        np.testing.assert_allclose(array[:, :, 0], rgb[:, :, 0] / 255.0, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_in_memory_images_read_as_their_files_do(tmp_path, mode):
    rgba = (np.random.default_rng(1).random((9, 13, 4)) * 255).astype(np.uint8)
    array = {"L": rgba[:, :, 0], "RGB": rgba[:, :, :3], "RGBA": rgba, "I;16": rgba[:, :, 0].astype(np.uint16) * 257}
    Image.fromarray(array[mode]).save(tmp_path / "x.png")
    from_file = load_image(tmp_path / "x.png")
    np.testing.assert_array_equal(image_from_memory(array[mode]), from_file)
    np.testing.assert_array_equal(image_from_memory(Image.open(tmp_path / "x.png")), from_file)
    floats = array[mode].astype(np.float64) / np.iinfo(array[mode].dtype).max
    np.testing.assert_allclose(image_from_memory(floats), from_file, atol=1e-6)
    if mode == "L":
        np.testing.assert_array_equal(image_from_memory(array[mode][:, :, None]), from_file)


def test_unreadable_arrays_say_what_to_give():
    frame = np.zeros((8, 10, 3), np.uint8)
    cases = {
        "looks channels-first": frame.transpose(2, 0, 1),
        "not an image": np.zeros((8, 10, 2)),
        "finite values in": frame.astype(np.float32) + 2,
        "int64 are not read": frame.astype(np.int64),
        "from a list": [[0, 1], [1, 0]],
        "not a tensor": torch.zeros(3, 8, 10),
    }
    for message, image in cases.items():
        with pytest.raises(DataError, match=message):
            image_from_memory(image)
    with pytest.raises(DataError, match="over the limit"):
        image_from_memory(frame, max_pixels=50)


def test_bad_files_give_data_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    write_image(tmp_path / "ok.png", np.zeros((10, 10)))
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:40])
    for name in ["empty.png", "text.png", "cut.png", "missing.png"]:
        with pytest.raises(DataError, match=name):
            load_image(tmp_path / name)
    with pytest.raises(DataError, match="pixel limit|over the limit"):
        load_image(tmp_path / "ok.png", max_pixels=50)


def test_mask_size_must_match_and_is_binarised(tmp_path):
    write_image(tmp_path / "m.png", np.array([[0, 0.4, 0.6, 1.0]]))
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png", (1, 4)), [[False, False, True, True]])
    with pytest.raises(DataError, match="mask .* is 4x1 but its image is 5x1"):
        load_mask(tmp_path / "m.png", (1, 5))


def test_preprocess_and_map_resize_round_trip_shapes():
    image = np.random.default_rng(0).random((30, 50, 3)).astype(np.float32)
    tensor = preprocess(image, 16)
    assert tensor.shape == (3, 16, 16) and float(tensor.min()) >= 0 and float(tensor.max()) <= 1
    constant = resize_map(tensor[0] * 0 + 0.5, (30, 50))
    assert constant.shape == (30, 50)
    np.testing.assert_allclose(constant, 0.5, atol=1e-6)


def test_demo_dataset_is_deterministic_and_has_masks(tmp_path):
    a = write_demo_dataset(tmp_path / "a", n_train=3, n_test_good=2, n_per_defect=2, size=48, seed=5)
    b = write_demo_dataset(tmp_path / "b", n_train=3, n_test_good=2, n_per_defect=2, size=48, seed=5)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 3 + 2 + 3 * 2 * 2
    for rel in files:
        assert np.array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel)))
    masks = [np.asarray(Image.open(p)) for p in (a / "ground_truth").rglob("*_mask.png")]
    assert all(m.max() == 255 and set(np.unique(m)) <= {0, 255} for m in masks)


def test_a_missing_relative_root_says_which_folder_it_was_read_from(tmp_path, monkeypatch):
    # A checkpoint keeps the root as given to train; used from another folder, a relative one points elsewhere.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        DataError,
        match=re.escape(f"dataset root ../no_data does not exist (a relative path, read from {tmp_path}; --data gives"),
    ):
        open_category(DataConfig(root="../no_data", category="tiny"))
    with pytest.raises(DataError, match="dataset root /no_data does not exist; expected MVTec"):
        open_category(DataConfig(root="/no_data", category="tiny"))


def test_demo_defects_in_a_window_are_small_in_a_large_image(tmp_path):
    base = write_demo_dataset(tmp_path, size=320, n_train=1, n_test_good=1, n_per_defect=2, defect_window=48)
    for mask_path in sorted((base / "ground_truth").rglob("*_mask.png")):
        ys, xs = np.nonzero(np.asarray(Image.open(mask_path)) > 127)
        assert len(ys) and np.ptp(ys) < 48 and np.ptp(xs) < 48  # inside one 48-pixel window of a 320-pixel image

"""Miniature copies of each supported dataset layout, read into train / validation / test."""

import numpy as np
import pytest

from defectmap.config import DataConfig
from defectmap.data.adapters import detect_format
from defectmap.data.mvtec import open_category
from tests.conftest import write_image

RNG = np.random.default_rng(0)


def img(path):
    return write_image(path, RNG.random((12, 16, 3)))


def mask(path, on=True):
    array = np.zeros((12, 16))
    if on:
        array[3:6, 4:8] = 1
    return write_image(path, array)


def build_visa(root):
    rows = ["object,split,label,image,mask"]
    for i in range(5):
        img(root / "candle" / "Data" / "Images" / "Normal" / f"{i}.JPG")
        rows.append(f"candle,train,normal,candle/Data/Images/Normal/{i}.JPG,")
    img(root / "candle" / "Data" / "Images" / "Normal" / "t0.JPG")
    rows.append("candle,test,normal,candle/Data/Images/Normal/t0.JPG,")
    for i in range(2):
        img(root / "candle" / "Data" / "Images" / "Anomaly" / f"a{i}.JPG")
        mask(root / "candle" / "Data" / "Masks" / "Anomaly" / f"a{i}.png")
        rows.append(f"candle,test,anomaly,candle/Data/Images/Anomaly/a{i}.JPG,candle/Data/Masks/Anomaly/a{i}.png")
    rows.append("other,train,normal,other/x.JPG,")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return "candle", (5, 1, 2)


def build_btad(root):
    for i in range(5):
        img(root / "01" / "train" / "ok" / f"{i:04d}.bmp")
    img(root / "01" / "test" / "ok" / "0100.bmp")
    for i in range(2):
        img(root / "01" / "test" / "ko" / f"{i:04d}.bmp")
        mask(
            root / "01" / "ground_truth" / "ko" / f"{i:04d}.bmp"
            if i
            else root / "01" / "ground_truth" / "ko" / f"{i:04d}.png"
        )
    return "01", (5, 1, 2)


def build_mpdd(root):
    for i in range(5):
        img(root / "bracket_white" / "train" / "good" / f"{i:03d}.png")
    img(root / "bracket_white" / "test" / "good" / "000.png")
    for i in range(2):
        img(root / "bracket_white" / "test" / "scratches" / f"{i:03d}.png")
        mask(root / "bracket_white" / "ground_truth" / "scratches" / f"{i:03d}_mask.png")
    return "bracket_white", (5, 1, 2)


def build_ksdd2(root):
    for i in range(6):
        img(root / "train" / f"{i}.png")
        mask(root / "train" / f"{i}_GT.png", on=i == 5)  # one defective training image: not used
    for i in range(3):
        img(root / "test" / f"{10 + i}.png")
        mask(root / "test" / f"{10 + i}_GT.png", on=i > 0)
    return "", (5, 1, 2)


def build_dagm(root):
    for part, flags in (("Train", [0, 0, 0, 0, 0, 1]), ("Test", [0, 1, 1])):
        lines = ["1"]
        for i, flag in enumerate(flags):
            name = f"{i:04d}.PNG"
            img(root / "Class1" / part / name)
            label = f"{i:04d}_label.PNG" if flag else "0"
            if flag:
                mask(root / "Class1" / part / "Label" / label)
            lines.append(f"{i + 1}\t{flag}\t{name}\t0\t{label}")
        (root / "Class1" / part / "Label").mkdir(parents=True, exist_ok=True)
        (root / "Class1" / part / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    return "Class1", (5, 1, 2)


def build_mt(root):
    for i in range(10):
        img(root / "MT_Free" / "Imgs" / f"exp0_num_{i}.jpg")
    for name in ("MT_Crack", "MT_Blowhole"):
        img(root / name / "Imgs" / "exp1_num_1.jpg")
        mask(root / name / "Imgs" / "exp1_num_1.png")
    return "", (8, 2, 2)


def build_folder(root):
    for i in range(5):
        img(root / "good" / f"{i}.png")
    img(root / "test_good" / "g.png")
    for i in range(2):
        img(root / "bad" / f"b{i}.png")
        mask(root / "masks" / f"b{i}_mask.png")
    return "", (5, 1, 2)


LAYOUTS = {"visa": build_visa, "btad": build_btad, "mpdd": build_mpdd, "ksdd2": build_ksdd2, "dagm": build_dagm,
           "mt": build_mt, "folder": build_folder}  # fmt: skip


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_is_detected_and_read(tmp_path, name):
    category, (n_good, n_test_good, n_defective) = LAYOUTS[name](tmp_path)
    cfg = DataConfig(root=str(tmp_path), category=category, val_fraction=0.2)
    if name == "folder":
        dirs = {"good_dir": "good", "test_good_dir": "test_good", "defect_dir": "bad", "mask_dir": "masks"}
        cfg = DataConfig(format="folder", val_fraction=0.2, **{k: str(tmp_path / v) for k, v in dirs.items()})
    expected = "mvtec" if name == "mpdd" else name
    assert detect_format(cfg) == expected
    data = open_category(cfg)
    assert len(data.train) + len(data.val) == n_good and len(data.val) >= 1
    assert sum(s.label == 0 for s in data.test) == n_test_good
    defective = [s for s in data.test if s.label == 1]
    assert len(defective) == n_defective and data.has_masks
    for sample in defective:
        assert sample.mask_path is not None and sample.mask_path.is_file()
        assert sample.path.is_file()
    named = open_category(DataConfig(**{**cfg.__dict__, "format": name}))
    assert [s.path for s in named.test] == [s.path for s in data.test]


def test_mt_release_split_is_seeded(tmp_path):
    build_mt(tmp_path)
    split = [open_category(DataConfig(root=str(tmp_path), split_seed=s)).test for s in (0, 0, 1)]
    assert [x.path for x in split[0]] == [x.path for x in split[1]]
    assert [x.path for x in split[0]] != [x.path for x in split[2]]

"""Plain folders of images: a --data folder of good images trains, and `test --good/--defects/--masks` evaluates a
checkpoint on folders without any dataset layout."""

import json
import shutil

import numpy as np
import pytest

from defectmap import engine, training
from defectmap.cli import main
from defectmap.config import DataConfig
from defectmap.data.adapters import detect_format
from defectmap.data.folders import open_test_folders
from defectmap.data.mvtec import CategoryData, Sample, leave_out_trained_files, open_category
from defectmap.errors import DataError
from tests.conftest import tiny_config, write_image
from tests.test_cli import TINY


def _test_folders(root, tiny_dataset):
    """The tiny dataset's test images as a user might keep them: good/, bad/<type>/ (holes flat in bad/holes), masks
    mirrored under masks/ for two types and flat in masks/ for the third."""
    test, truth = tiny_dataset / "tiny" / "test", tiny_dataset / "tiny" / "ground_truth"
    shutil.copytree(test / "good", root / "good")
    for kind in ("hole", "stain"):
        shutil.copytree(test / kind, root / "bad" / kind)
        shutil.copytree(truth / kind, root / "masks" / kind)
    shutil.copytree(test / "thread", root / "threads")
    shutil.copytree(truth / "thread", root / "masks", dirs_exist_ok=True)
    return root


def test_a_folder_of_images_given_as_data_trains_on_them(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for i in range(5):
        write_image(tmp_path / "parts" / f"{i}.png", rng.random((20, 24, 3)))
    cfg = DataConfig(root=str(tmp_path / "parts"), val_fraction=0.2)
    assert detect_format(cfg) == "folder"
    data = open_category(cfg)
    assert data.name == "parts" and len(data.train) == 4 and len(data.val) == 1 and not data.test
    assert any("training only" in note for note in data.notes)
    assert detect_format(DataConfig(root=str(tmp_path), category="parts")) == "mvtec"  # a category: not the folder
    monkeypatch.chdir(tmp_path / "parts")
    with pytest.raises(DataError, match="no dataset given"):  # no --data: not the images in the current folder
        open_category(DataConfig())
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="or a folder that holds good images"):  # what else --data may name
        open_category(DataConfig(root=str(tmp_path / "other")))
    shutil.copytree(tmp_path / "parts", tmp_path / "labelled" / "good")  # good/ beside the defects: point at it
    with pytest.raises(DataError, match=f"to train on {tmp_path / 'labelled' / 'good'}'s images, give --data "):
        open_category(DataConfig(root=str(tmp_path / "labelled")))


def test_test_folders_pair_masks_and_name_defect_types(tmp_path, tiny_dataset):
    root = _test_folders(tmp_path / "mine", tiny_dataset)
    data = open_test_folders(
        "tiny", str(root / "good"), [str(root / "bad"), str(root / "threads")], str(root / "masks")
    )
    assert not data.train and not data.val and data.has_masks and not data.notes
    assert sorted(s.defect for s in data.test) == ["good"] * 3 + ["hole"] * 2 + ["stain", "threads"]
    for sample in data.test:
        if sample.label:
            assert sample.mask_path.name == f"{sample.path.stem}_mask.png"
            assert sample.mask_path.parent.name in (sample.defect, "masks")
    copied = shutil.copy(root / "good" / "01.jpg", tmp_path / "renamed.jpg")  # the same file under another name
    trained = CategoryData("tiny", train=[Sample(copied, 0)], val=[], test=[], has_masks=False,
                           anomalies=[Sample(root / "bad" / "hole" / "00.png", 1)])  # fmt: skip
    leave_out_trained_files(data, {"trained_files": trained.trained_file_digests()})
    left = sorted(str(s.path.relative_to(root)) for s in data.test)
    assert left == ["bad/hole/03.png", "bad/stain/01.png", "good/00.jpg", "good/02.jpg", "threads/02.png"]
    assert data.notes == ["2 test images that trained or calibrated the model (the same files, as its checkpoint "
                          "records) left out of the test set"]  # fmt: skip
    no_masks = open_test_folders("tiny", defects=[str(root / "bad")])
    assert not no_masks.has_masks and no_masks.notes == ["no --masks: image-level metrics only"]


@pytest.mark.parametrize(
    "good, defects, masks, message",
    [
        ("good", ["missing"], "", "--defects: folder missing does not exist"),
        ("", ["bad"], "nomasks", "--masks: folder nomasks does not exist"),
        (
            "",
            ["threads"],
            "masks/hole",
            "no mask for threads/02.png: expected 02_mask.png in masks/hole or masks/hole/threads",
        ),
        ("bad", ["bad/stain"], "", "bad/stain/01.png is under both --good and --defects"),
        ("", ["."], "", "good is under --defects, so its images would count as defective: give it with --good"),
    ],
)
def test_test_folders_refuse_what_would_mislabel(tmp_path, tiny_dataset, monkeypatch, good, defects, masks, message):
    monkeypatch.chdir(_test_folders(tmp_path / "mine", tiny_dataset))
    with pytest.raises(DataError, match=message):
        open_test_folders("tiny", good, defects, masks)


def test_test_command_on_folders_and_on_another_dataset(tmp_path, tiny_dataset, capsys):
    parts = tmp_path / "parts"
    shutil.copytree(tiny_dataset / "tiny" / "train" / "good", parts)
    run = tmp_path / "run"
    assert main(["train", "--model", "ae", "--data", str(parts), "--out", str(run), "--quiet", *TINY]) == 0
    ckpt = str(run / "model.ckpt")
    assert f"next: defectmap test {ckpt} --good DIR --defects DIR, or" in capsys.readouterr().out  # no test images
    assert main(["test", ckpt, "--quiet"]) == 2
    assert "parts has no test images: give them with --good DIR and --defects DIR" in capsys.readouterr().err
    root = _test_folders(tmp_path / "mine", tiny_dataset)
    shutil.copytree(root / "good", tmp_path / "good_and_trained")
    for name in ("00.png", "05.png"):  # two of its training images among the good test images: left out
        shutil.copy(parts / name, tmp_path / "good_and_trained" / f"t{name}")
    with_trained = ["--good", str(tmp_path / "good_and_trained"), "--defects", str(root / "bad"), "--quiet"]
    assert main(["test", ckpt, *with_trained, "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["test_images"] == 6
    folders = ["--good", str(root / "good"), "--defects", str(root / "bad"), str(root / "threads")]
    assert main(["test", ckpt, *folders, "--masks", str(root / "masks"), "--out", str(tmp_path / "f"), "--quiet"]) == 0
    on_folders = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert on_folders["category"] == "parts" and on_folders["aupro"] is not None
    assert sorted(on_folders["defect_types"]) == ["hole", "stain", "threads"]  # a flat folder: its name
    out = ["--out", str(tmp_path / "d"), "--quiet"]
    assert main(["test", ckpt, "--data", str(tiny_dataset), "--category", "tiny", *out]) == 0  # its own layout
    on_dataset = json.loads((tmp_path / "d" / "metrics.json").read_text())
    by_path = {m["path"].split("/")[-1]: m["score"] for m in on_folders["images"]}  # the same images, same scores
    assert {m["path"].split("/")[-1]: m["score"] for m in on_dataset["images"]} == by_path
    assert on_dataset["aupro"] == on_folders["aupro"]
    capsys.readouterr()
    assert main(["test", ckpt, "--data", str(tiny_dataset), *folders]) == 2
    assert main(["test", ckpt, "--good", str(root / "good"), "--masks", str(root / "masks")]) == 2
    assert main(["test", ckpt, "--good", str(parts)]) == 2  # only the images it trained on
    said = capsys.readouterr().err.splitlines()
    assert said == [
        "defectmap: error: give either --data/--category or --good/--defects, not both",
        "defectmap: error: --masks goes with --defects: the folders of defective images they mark",
        "defectmap: error: parts has no test images (all 8 trained or calibrated the model): give them with --good "
        "DIR and --defects DIR [--masks DIR], or a dataset with --data ROOT",
    ]


def test_every_evaluation_leaves_out_the_files_that_trained_the_model(tmp_path, tiny_dataset):
    good = tiny_dataset / "tiny" / "train" / "good"
    cfg = tiny_config("ae", category="parts")
    cfg.data.good_dir, cfg.data.test_good_dir = str(good), str(good)  # a test folder that holds the training images
    cfg.data.defect_dir = str(tiny_dataset / "tiny" / "test" / "hole")
    detector = engine.load(training.fit(cfg, tmp_path / "run", progress=False))
    assert len(open_category(detector.config.data, normals=False).test) == 8 + 2
    split = engine.test_split(detector)  # what test, report, benchmark and the demo evaluate
    assert [s.label for s in split.test] == [1, 1] and "8 test images that trained" in split.notes[-1]

"""End to end through the command line: train, test, predict, and one-line errors with exit code 2."""

import csv
import json
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from defectmap import metrics
from defectmap.cli import main

TINY = [
    "--set",
    "data.image_size=32",
    "--set",
    "train.epochs=2",
    "--set",
    "train.batch_size=4",
    "--set",
    "model.channels=[8,16]",
    "--set",
    "model.latent_channels=4",
    "--set",
    "train.device=cpu",
]


@pytest.fixture
def trained(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "ae",
            "--data",
            str(tiny_dataset),
            "--category",
            "tiny",
            "--out",
            str(run),
            "--quiet",
            *TINY,
        ]
    )
    assert code == 0
    return run


def test_train_ends_with_the_epoch_it_kept_and_what_to_do_next(capsys, trained):  # capsys first: it sees train
    ckpt = trained / "model.ckpt"
    history = json.loads((trained / "history.json").read_text())
    best = min(history, key=lambda epoch: epoch["val_loss"])
    said = capsys.readouterr().out.splitlines()
    steps = history[-1]["step"]
    assert said[-2].startswith(f"saved {ckpt}: 2 epochs ({steps} optimizer step{'s' * (steps != 1)}) in 0 min ")
    kept = f"the weights of epoch {best['epoch']}, the lowest validation loss ({best['val_loss']:.5g})"
    assert said[-2].endswith(kept)
    assert said[-1] == f"next: defectmap test {ckpt}, or defectmap predict {ckpt} IMAGES --out DIR"


def test_train_test_predict_agree(trained, tiny_dataset, tmp_path, capsys):
    ckpt = trained / "model.ckpt"
    assert ckpt.is_file() and (trained / "history.json").is_file()
    assert main(["test", str(ckpt), "--quiet"]) == 0
    report = json.loads((trained / "metrics.json").read_text())
    for name in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "f1_max"):
        assert isinstance(report[name], float) and 0.0 <= report[name] <= 1.0, name
    assert report["test_images"] == 7 and report["defective_images"] == 4
    # How the figures were made: input size, error-map filters, device and library versions.
    assert report["image_size"] == 32 and report["postprocess"]["hee"] is False and report["device"] == "cpu"
    assert report["versions"]["torch"] and report["versions"]["defectmap"]
    types = report["defect_types"]  # the breakdown adds up to the totals
    assert types and sum(t["images"] for t in types.values()) == report["defective_images"]
    assert sum(t["missed"] for t in types.values()) == report["defects_missed"]
    low, high = report["image_auroc_interval95"]  # bootstrap over the test images, printed with the figure
    assert low <= report["image_auroc"] <= high
    printed = capsys.readouterr().out
    assert "image_auroc" in printed and all(f"{defect}:" in printed for defect in types)
    assert f"95% interval {low:.4f}-{high:.4f}" in printed

    out = tmp_path / "pred"
    test_dir = tiny_dataset / "tiny" / "test"
    assert main(["predict", str(ckpt), str(test_dir), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 7
    defects = sum(row["decision"] == "defect" for row in rows)
    promise = "the threshold's 1 good image promises about 50.0% of good parts rejected, at most 95.0% at 95%"
    assert f"decisions in it: {defects} defect, {7 - defects} good; {promise}" in capsys.readouterr().out
    for row in rows:
        image = Image.open(row["path"])
        assert Image.open(out / row["map"]).size == image.size  # maps at the original resolution
        assert row["decision"] in ("good", "defect")
    # One inference path: predict's scores reproduce the image AUROC that `test` reported.
    labels = [0 if "/good/" in row["path"] else 1 for row in rows]
    auroc = metrics.image_auroc(np.array(labels), np.array([float(r["score"]) for r in rows]))
    assert auroc == pytest.approx(report["image_auroc"], abs=1e-12)
    # ... and its regions.csv counts the regions `test` counted (every defective tiny test image has a marked defect).
    counts = {
        label: [int(r["regions"]) for r, lab in zip(rows, labels, strict=True) if lab == label] for label in (0, 1)
    }
    regions = report["regions"]
    assert regions["min_area"] == 1 and regions["defective_images"] == len(counts[1]) == 4
    assert regions["regions_per_defective_image"] == pytest.approx(np.mean(counts[1]))
    assert regions["regions_per_good_image"] == pytest.approx(np.mean(counts[0]))
    assert regions["good_images_clear"] == pytest.approx(np.mean(np.array(counts[0]) == 0))
    assert regions["regions_per_defective_image"] > 0 and 0 <= regions["defects_found"] <= 1
    assert "outlined at the pixel threshold" in printed


def test_predict_lists_the_regions_of_each_saved_mask(trained, tiny_dataset, tmp_path, capsys):
    ckpt, test_dir = str(trained / "model.ckpt"), str(tiny_dataset / "tiny" / "test")
    out = tmp_path / "pred"
    assert main(["predict", ckpt, test_dir, "--out", str(out), "--quiet"]) == 0
    scores = list(csv.DictReader((out / "scores.csv").open()))
    regions = list(csv.DictReader((out / "regions.csv").open()))
    assert regions, "the tiny model predicts some defect pixels on the test images"
    for row in scores:  # regions.csv describes exactly the mask PNG beside it
        mask = np.asarray(Image.open(out / row["mask"])) > 0
        components, count = ndimage.label(mask, structure=np.ones((3, 3)))
        mine = [r for r in regions if r["path"] == row["path"]]
        assert int(row["regions"]) == len(mine) == count
        assert sorted(int(r["area"]) for r in mine) == sorted(np.bincount(components.ravel())[1:].tolist())
        assert [int(r["region"]) for r in mine] == list(range(1, count + 1))
    areas = sorted(int(r["area"]) for r in regions)
    small = main(["predict", ckpt, test_dir, "--out", str(tmp_path / "big_only"), "--quiet",
                  "--min-area", str(areas[len(areas) // 2])])  # fmt: skip
    kept = list(csv.DictReader((tmp_path / "big_only" / "regions.csv").open()))
    assert small == 0 and 0 < len(kept) < len(regions) and min(int(r["area"]) for r in kept) >= areas[len(areas) // 2]
    capsys.readouterr()
    assert main(["predict", ckpt, test_dir, "--out", str(tmp_path / "none"), "--min-area", "0"]) == 2
    assert "--min-area must be at least 1" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_bad_data_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "missing"), "--category", "x", "--out", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    assert not run.exists()


def test_unknown_set_key_exit_2(tiny_dataset, tmp_path, capsys):
    code = main(
        [
            "train",
            "--data",
            str(tiny_dataset),
            "--category",
            "tiny",
            "--out",
            str(tmp_path / "r"),
            "--set",
            "train.epoks=1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "epochs" in err and err.count("\n") == 1


def test_corrupted_and_future_checkpoints_exit_2(trained, tmp_path, capsys):
    import torch

    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((trained / "model.ckpt").read_bytes()[:500])
    assert main(["test", str(broken)]) == 2
    assert "corrupted" in capsys.readouterr().err
    payload = torch.load(trained / "model.ckpt", weights_only=True)
    payload["format_version"] = 99
    future = tmp_path / "future.ckpt"
    torch.save(payload, future)
    assert main(["predict", str(future), str(tmp_path), "--out", str(tmp_path / "p")]) == 2
    assert "newer" in capsys.readouterr().err


def test_the_training_state_given_as_a_model_points_to_model_ckpt(trained, capsys):
    assert (trained / "last.ckpt").is_file()
    for command in (["test"], ["export", "--out", str(trained / "m.onnx")]):
        assert main([command[0], str(trained / "last.ckpt"), *command[1:]]) == 2
        err = capsys.readouterr().err
        assert "train --resume" in err and "model.ckpt" in err and err.count("\n") == 1


def test_out_of_range_values_exit_2_and_write_nothing(trained, tiny_dataset, tmp_path, capsys):
    run = tmp_path / "r"
    train = ["train", "--data", str(tiny_dataset), "--category", "tiny", "--out", str(run), "--quiet"]
    assert main([*train, "--set", "data.image_size=30"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.image_size=30 does not fit ae" in err and not run.exists()
    assert main(["test", str(trained / "model.ckpt"), "--tile", "-8", "--out", str(run)]) == 2
    assert "data.tile must be at least 0, got -8" in capsys.readouterr().err and not run.exists()


def test_train_into_a_run_folder_needs_resume_or_overwrite(trained, tiny_dataset, capsys):
    saved = (trained / "model.ckpt").read_bytes()
    train = ["train", "--data", str(tiny_dataset), "--category", "tiny", "--out", str(trained), "--quiet"]
    assert main([*train, "--set", "train.epochs=1"]) == 2
    assert "already holds a run (model.ckpt)" in capsys.readouterr().err
    assert (trained / "model.ckpt").read_bytes() == saved
    assert main([*train, "--overwrite", "--set", "train.epochs=1", "--set", "train.seed=1"]) == 0
    assert (trained / "model.ckpt").read_bytes() != saved


def test_predict_missing_path_exit_2(trained, tmp_path, capsys):
    assert main(["predict", str(trained / "model.ckpt"), str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_models_lists_every_method(capsys):
    assert main(["models"]) == 0
    assert capsys.readouterr().out.startswith("ae ")


def test_version_names_the_package_and_torch(capsys):
    import torch

    from defectmap import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"defectmap {__version__} (torch {torch.__version__})"


def test_interrupted_batch_prediction_resumes_to_the_same_csv(trained, tiny_dataset, tmp_path, monkeypatch):
    from defectmap import engine

    folder = tiny_dataset / "tiny"
    ckpt = str(trained / "model.ckpt")
    whole = tmp_path / "whole"
    assert main(["predict", ckpt, str(folder), "--out", str(whole), "--quiet"]) == 0
    expected = (whole / "scores.csv").read_text()
    assert expected.count("\n") == 1 + 8 + 7 + 4  # header, train/good, test images, ground-truth masks
    expected_regions = (whole / "regions.csv").read_text()

    real_predict = engine.predict

    def interrupted(*args, **kwargs):
        for i, row in enumerate(real_predict(*args, **kwargs)):
            if i == 6:
                raise KeyboardInterrupt
            yield row

    part = tmp_path / "part"
    monkeypatch.setattr(engine, "predict", interrupted)
    assert main(["predict", ckpt, str(folder), "--out", str(part), "--quiet"]) == 130
    monkeypatch.setattr(engine, "predict", real_predict)
    scored = {row["path"] for row in csv.DictReader((part / "scores.csv").open())}
    torn = next(row["path"] for row in csv.DictReader((whole / "scores.csv").open()) if row["path"] not in scored)
    with (part / "regions.csv").open("a") as handle:  # its regions were written, then the kill came
        handle.write(f"{torn},1,0,0,2,2,4,9.5,3.1\r\n")
    with (part / "scores.csv").open("a") as handle:  # in the middle of writing its score row
        handle.write(torn + ",0.12")
    assert main(["predict", ckpt, str(folder), "--out", str(part), "--quiet", "--resume"]) == 0
    assert (part / "scores.csv").read_text() == expected
    assert (part / "regions.csv").read_text() == expected_regions
    assert sorted(p.name for p in (part / "maps").iterdir()) == sorted(p.name for p in (whole / "maps").iterdir())


def _train_unquiet(tiny_dataset, out) -> int:
    return main(["train", "--data", str(tiny_dataset), "--category", "tiny", "--out", str(out), *TINY])


def test_progress_bars_only_on_a_terminal_and_epoch_lines_always(tiny_dataset, tmp_path, capsys, terminal_stderr):
    assert _train_unquiet(tiny_dataset, tmp_path / "logged") == 0  # stderr captured: not a terminal
    logged = capsys.readouterr()
    assert "epoch 1: train loss" in logged.out and "epoch 2: train loss" in logged.out
    assert "\r" not in logged.err and "it/s" not in logged.err
    terminal = terminal_stderr()  # from here on stderr is a terminal
    assert _train_unquiet(tiny_dataset, tmp_path / "interactive") == 0
    assert "epoch 1/2" in terminal.getvalue() and "\r" in terminal.getvalue()
    assert "epoch 1: train loss" in capsys.readouterr().out


def test_every_command_and_option_says_what_it_is_for():
    import argparse

    from defectmap.arguments import parser
    from defectmap.cli import HANDLERS

    [commands] = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(HANDLERS) == set(commands.choices)  # every command runs something, every handler is reachable
    helped = {choice.dest for choice in commands._choices_actions if choice.help}
    assert helped == set(commands.choices)
    missing = [f"{name} {action.option_strings or action.dest}" for name, sub in commands.choices.items()
               for action in sub._actions if not action.help]  # fmt: skip
    assert missing == []


def test_every_image_gets_its_own_output_name(tmp_path):
    from defectmap.outputs import collect_images

    pixels = np.zeros((4, 4), np.uint8)
    for rel in ("x/a.png", "y/a.png", "y/sub/b.png", "a_2.png", "a.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / rel)
    found = collect_images([tmp_path / "x", tmp_path / "y", tmp_path / "a_2.png", tmp_path / "a.jpg"])
    names = {str(sample.path.relative_to(tmp_path)): name for sample, name in found}
    # Folder contents are named by their path inside the folder; a clash gets the next free suffix, never another
    # file's own name (a_2.png keeps "a_2").
    assert names == {"x/a.png": "a", "y/a.png": "a_3", "y/sub/b.png": "sub__b", "a_2.png": "a_2", "a.jpg": "a_4"}


def test_demo_trains_reports_and_its_suggested_predict_command_works(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet", "--set", "train.epochs=1", "--set", "data.image_size=32"]) == 0
    said = capsys.readouterr().out
    assert "ae on fabric: 75 test images (45 defective)" in said and (out / "run" / "metrics.json").is_file()
    [line] = [line for line in said.splitlines() if line.startswith("next, maps and outlined defects: ")]
    command = line.split(": ", 1)[1].split()
    assert command[:2] == ["defectmap", "predict"]
    assert main([*command[1:], "--quiet"]) == 0
    assert len(list((out / "predictions" / "overlays").glob("*.png"))) == 75


@pytest.mark.parametrize(("argv0", "shown"), [(".venv/bin/defectmap", ".venv/bin/defectmap"), ("pytest", "defectmap")])
def test_suggested_commands_name_the_program_as_it_was_called(monkeypatch, argv0, shown):
    from defectmap import cli

    monkeypatch.setattr(sys, "argv", [argv0, "demo"])  # `make demo` runs .venv/bin/defectmap, not on PATH
    assert cli._program() == shown

"""`defectmap granularity`: DAAD's granularity study, trained per block scale and seed, or scored from checkpoints."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from defectmap import engine, training
from defectmap.cli import main
from defectmap.data.mvtec import open_category
from defectmap.granularity_study import reconstruction_errors
from tests.conftest import TINY_MODEL, tiny_config


def tiny_preset(tmp_path: Path, method: str = "daad") -> Path:
    values = {
        "method": method,
        "data": {"image_size": 32, "val_fraction": 0.25},
        "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 4, "device": "cpu"},
        "model": TINY_MODEL[method],
    }
    path = tmp_path / f"tiny_{method}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def study_args(tiny_dataset: Path, out: Path, preset: Path, *extra: str) -> list[str]:
    return ["granularity", "--data", str(tiny_dataset), "--category", "tiny", "--out", str(out),
            "--config", str(preset), "--quiet", *extra]  # fmt: skip


def test_study_trains_every_scale_and_seed_and_a_rerun_trains_nothing(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "study"
    args = study_args(tiny_dataset, out, tiny_preset(tmp_path), "--scales", "4,1", "--seeds", "2",
                      "--set", "model.adversarial=false")  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| scale s | block sizes | runs |" in printed and "granularity.png" in printed
    record = json.loads((out / "granularity.json").read_text())
    assert [(r["scale"], r["block_sizes"], r["runs"]) for r in record["rows"]] == [(1, [1, 1], 2), (4, [4, 2], 2)]
    assert record["sets"] == ["model.adversarial=false"] and record["seeds"] == 2
    for row in record["rows"]:
        runs = [r for r in record["runs"] if r["block_sizes"] == row["block_sizes"]]
        assert sorted(r["seed"] for r in runs) == [0, 1]
        aurocs = [json.loads((Path(r["run"]) / "metrics.json").read_text())["image_auroc"] for r in runs]
        assert row["image_auroc"] == pytest.approx(np.mean(aurocs))
        assert row["image_auroc_std"] == pytest.approx(np.std(aurocs, ddof=1))
        assert row["error_good"] == pytest.approx(np.mean([r["error_good"] for r in runs])) and row["error_good"] > 0
        saved = torch.load(Path(runs[1]["run"]) / "model.ckpt", weights_only=True)["config"]
        assert list(saved["model"]["block_sizes"]) == row["block_sizes"] and saved["model"]["adversarial"] is False
        assert saved["train"]["seed"] == 1 and Path(runs[1]["run"]) == out / f"scale{row['scale']}" / "seed1"
    assert Image.open(out / "granularity.png").size[0] > 500
    assert (out / "granularity.md").read_text().count("\n") == 4  # header, rule, two scales

    trained = {p: p.stat().st_mtime_ns for p in out.glob("scale*/seed*/model.ckpt")}
    assert len(trained) == 4
    assert main(args) == 0  # finished runs are read, not trained again
    assert {p: p.stat().st_mtime_ns for p in out.glob("scale*/seed*/model.ckpt")} == trained
    assert json.loads((out / "granularity.json").read_text())["rows"] == record["rows"]


def test_reconstruction_errors_are_mean_squared_errors_per_label(tiny_dataset):
    detector = engine.load(training.fit(tiny_config("daad", tiny_dataset), tiny_dataset / "run", progress=False))
    test = open_category(detector.config.data).test
    detector.model.reconstruct = lambda images: (images, [])  # a perfect reconstruction
    assert reconstruction_errors(detector, test) == {"error_good": 0.0, "error_defective": 0.0}
    detector.model.reconstruct = lambda images: (torch.zeros_like(images), [])  # the error is then the image's power
    from defectmap.data.dataset import ImageDataset

    items = [ImageDataset(test, 32)[i] for i in range(len(test))]
    power = {label: np.mean([it["image"].pow(2).mean().item() for it in items if it["label"] == label])
             for label in (0, 1)}  # fmt: skip
    got = reconstruction_errors(detector, test)
    assert got["error_good"] == pytest.approx(power[0], rel=1e-5)
    assert got["error_defective"] == pytest.approx(power[1], rel=1e-5)


def test_study_scores_checkpoints_trained_elsewhere(tiny_dataset, tmp_path):
    # One row per block layout, the mean over its checkpoints (seeds); nothing is trained, no --data needed.
    ckpt = training.fit(tiny_config("daad", tiny_dataset), tmp_path / "run", progress=False)
    detector = engine.load(ckpt)
    report = engine.evaluate(detector, open_category(detector.config.data), progress=False)
    args = ["granularity", "--checkpoints", str(ckpt), str(ckpt), "--out", str(tmp_path / "study"), "--quiet"]
    assert main(args) == 0
    [row] = json.loads((tmp_path / "study" / "granularity.json").read_text())["rows"]
    assert row["scale"] == TINY_MODEL["daad"]["block_sizes"][0] and row["runs"] == 2
    assert row["image_auroc"] == pytest.approx(report["image_auroc"]) and row["image_auroc_std"] == 0
    assert row["error_good"] > 0 and row["error_defective"] > 0


@pytest.mark.parametrize(
    "case", ["scales", "scales not numbers", "seeds", "pmb preset", "blocks too large", "no data", "missing data"]
)
def test_study_bad_input_is_one_line_and_writes_nothing(case, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "study"
    daad = tiny_preset(tmp_path)
    args = {
        "scales": study_args(tiny_dataset, out, daad, "--scales", "0,2"),
        "scales not numbers": study_args(tiny_dataset, out, daad, "--scales", "8,big"),
        "seeds": study_args(tiny_dataset, out, daad, "--seeds", "0"),
        "pmb preset": study_args(tiny_dataset, out, tiny_preset(tmp_path, "pmb")),
        "blocks too large": study_args(tiny_dataset, out, daad, "--scales", "64"),  # 64 x 64 blocks of a 16 x 16 map
        "no data": ["granularity", "--out", str(out)],
        "missing data": study_args(tmp_path / "nowhere", out, daad),
    }[case]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("defectmap: error:") and "\n" not in err
    assert not out.exists()


def test_study_refuses_a_checkpoint_of_another_model_before_scoring_any(tiny_dataset, tmp_path, capsys):
    daad = training.fit(tiny_config("daad", tiny_dataset), tmp_path / "daad", progress=False)
    ae = training.fit(tiny_config("ae", tiny_dataset), tmp_path / "ae", progress=False)
    assert main(["granularity", "--checkpoints", str(daad), str(ae), "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"defectmap: error: {ae} is a checkpoint of ae; the granularity study scores daad checkpoints"
    assert not (tmp_path / "study").exists()


def test_study_from_python_refuses_no_scales(tiny_dataset, tmp_path):
    from defectmap.errors import ConfigError
    from defectmap.granularity_study import run_study

    with pytest.raises(ConfigError, match="block scales must be one or more"):
        run_study(str(tiny_dataset), "tiny", tmp_path / "study", scales=[])
    assert not (tmp_path / "study").exists()

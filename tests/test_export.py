"""Export parity for every model: torch vs onnxruntime (and TorchScript) maps within 1e-4, same decisions."""

import numpy as np
import pytest
import torch

from defectmap import engine, training
from defectmap.data.mvtec import open_category
from defectmap.errors import CheckpointError
from defectmap.export import TorchScriptModel, export
from defectmap.models import MODELS
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory):
    """One briefly trained checkpoint per model on the tiny demo-fabric dataset."""
    from defectmap.data.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("export")

    write_demo_dataset(root / "data", category="tiny", size=48, n_train=8, n_test_good=4, n_per_defect=2)
    checkpoints = {}
    for method in MODELS:
        torch.manual_seed(0)
        cfg = tiny_config(method, root / "data", epochs=2)
        checkpoints[method] = training.fit(cfg, root / method, progress=False)
    return root, checkpoints


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".ts")])
@pytest.mark.parametrize("method", list(MODELS))
def test_exported_model_matches_checkpoint(method, fmt, suffix, trained_models):
    root, checkpoints = trained_models
    reference = engine.load(checkpoints[method], device="cpu")
    path = export(reference, root / f"{method}{suffix}", fmt)
    exported = engine.load(path, device="cpu")
    assert exported.calibration == reference.calibration
    assert exported.config == reference.config
    for key in ("category", "history", "training_normals", "training_anomalies", "trained_files"):  # test, info
        assert exported.info[key] == reference.info[key]
    samples = open_category(reference.config.data).test
    torch_rows = list(engine.predict(reference, samples, progress=False))
    export_rows = list(engine.predict(exported, samples, progress=False))
    assert len(torch_rows) == len(export_rows) == len(samples)
    for a, b in zip(torch_rows, export_rows, strict=True):
        assert a["path"] == b["path"] and a["map"].shape == b["map"].shape
        np.testing.assert_allclose(a["map"], b["map"], atol=1e-4, rtol=0)
        assert abs(a["score"] - b["score"]) < 1e-4
        assert a["defective"] == b["defective"]
    # exporting leaves the original model untouched
    assert torch.equal(engine.load(checkpoints[method], device="cpu").model(torch.ones(1, 3, 32, 32)).anomaly_map,
                       reference.model(torch.ones(1, 3, 32, 32)).anomaly_map)  # fmt: skip


def test_not_a_defectmap_export_is_a_clear_error(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"nonsense")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        engine.load(tmp_path / "x.onnx")


def test_export_and_predict_from_the_command_line(trained_models, tmp_path):
    import csv

    from defectmap.cli import main

    root, checkpoints = trained_models
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(checkpoints["ae"]), "--format", "onnx", "--out", str(onnx_path)]) == 0
    test_dir = root / "data" / "tiny" / "test"
    for name, model in [("ckpt", checkpoints["ae"]), ("onnx", onnx_path)]:
        assert main(["predict", str(model), str(test_dir), "--out", str(tmp_path / name), "--quiet"]) == 0
    rows = {name: list(csv.DictReader((tmp_path / name / "scores.csv").open())) for name in ("ckpt", "onnx")}
    assert [r["decision"] for r in rows["ckpt"]] == [r["decision"] for r in rows["onnx"]]
    for a, b in zip(rows["ckpt"], rows["onnx"], strict=True):
        assert abs(float(a["score"]) - float(b["score"])) < 1e-4


def test_format_follows_the_suffix_and_a_mismatch_writes_nothing(trained_models, tmp_path, capsys):
    from defectmap.cli import main

    _, checkpoints = trained_models
    ts_path = tmp_path / "model.ts"
    assert main(["export", str(checkpoints["ae"]), "--out", str(ts_path)]) == 0  # TorchScript, from the suffix
    assert isinstance(engine.load(ts_path, device="cpu").model, TorchScriptModel)
    for args in (["--out", str(tmp_path / "m.ts"), "--format", "onnx"], ["--out", str(tmp_path / "m.bin")]):
        assert main(["export", str(checkpoints["ae"]), *args]) == 2
        assert "name a" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ts"]


def test_onnx_takes_the_cuda_provider_when_asked_for_cuda_and_says_when_it_cannot(trained_models, tmp_path,
                                                                                   monkeypatch):  # fmt: skip
    import onnxruntime

    from defectmap.export import load_exported

    _, checkpoints = trained_models
    path = export(engine.load(checkpoints["ae"], device="cpu"), tmp_path / "m.onnx")
    chosen, real = [], onnxruntime.InferenceSession

    def session(file, options, providers):  # records the request, runs on the CPU (no GPU here)
        chosen.append(providers)
        return real(file, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    load_exported(path, torch.device("cpu"))
    with pytest.warns(UserWarning, match="onnxruntime-gpu"):
        detector = load_exported(path, torch.device("cuda"))
    assert detector.device == torch.device("cpu")
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    load_exported(path, torch.device("cuda"))
    assert chosen == [["CPUExecutionProvider"]] * 2 + [["CUDAExecutionProvider", "CPUExecutionProvider"]]


@pytest.mark.parametrize("runner", ["OnnxModel", "TorchScriptModel"])
def test_an_export_that_does_not_reproduce_the_model_is_refused_and_not_written(runner, trained_models, tmp_path,
                                                                                monkeypatch, capsys):  # fmt: skip
    from defectmap import export as export_module
    from defectmap.cli import main

    _, checkpoints = trained_models
    original = getattr(export_module, runner).__call__

    def drifted(self, images):  # an exporter bug: maps off by 1e-2
        out = original(self, images)
        return out._replace(anomaly_map=out.anomaly_map + 1e-2)

    monkeypatch.setattr(getattr(export_module, runner), "__call__", drifted)
    out = tmp_path / ("m.onnx" if runner == "OnnxModel" else "m.ts")
    assert main(["export", str(checkpoints["ae"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not reproduce the model" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


def test_onnx_runs_without_busy_waiting_between_calls(trained_models, tmp_path):
    # onnxruntime's spinning threads would compete with PyTorch's pre- and post-processing around every run.
    _, checkpoints = trained_models
    detector = engine.load(export(engine.load(checkpoints["ae"], device="cpu"), tmp_path / "m.onnx"), device="cpu")
    options = detector.model.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_an_export_scores_tiles_by_the_rule_its_checkpoint_chose(trained_models):
    root, checkpoints = trained_models
    reference = engine.load(checkpoints["ae"], device="cpu")
    reference.config.data.tile, reference.config.data.tile_overlap, reference.config.data.tile_score = 24, 8, "map"
    exported = engine.load(export(reference, root / "tiled.onnx", "onnx"), device="cpu")
    assert exported.config.data.tile_score == "map"
    samples = open_category(reference.config.data).test
    rows = [list(engine.predict(detector, samples, progress=False)) for detector in (reference, exported)]
    for a, b in zip(*rows, strict=True):
        np.testing.assert_allclose(a["map"], b["map"], atol=1e-4, rtol=0)
        assert a["score"] == pytest.approx(b["score"], abs=1e-4) and a["score"] == pytest.approx(float(a["map"].max()))

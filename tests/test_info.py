"""`defectmap info`: what a checkpoint or an exported model is, from the file alone."""

import json

from defectmap.cli import main
from tests.test_cli import trained  # noqa: F401 (a fixture: one tiny AE run)


def test_info_says_what_trained_the_model_and_what_its_threshold_promises(trained, tmp_path, capsys):  # noqa: F811
    ckpt = str(trained / "model.ckpt")
    capsys.readouterr()
    assert main(["info", ckpt]) == 0
    lines = capsys.readouterr().out.splitlines()
    history = json.loads((trained / "history.json").read_text())
    best = min(history, key=lambda epoch: epoch["val_loss"])
    assert lines[:4] == [f"{ckpt}:", "ae: Plain convolutional autoencoder: the baseline every method is compared with.",
                         f"  category:     tiny ({trained.parent / 'data'}), input 32²",
                         "  trained on:   7 good images, 1 for validation"]  # fmt: skip
    steps = history[-1]["step"]  # optimizer steps in all: as many in each epoch
    assert steps == 2 * history[0]["step"] > 0
    assert lines[4].startswith(f"  training:     2 epochs ({steps} optimizer step{'s' * (steps != 1)}) in 0 min ")
    assert lines[4].endswith(f"the weights of epoch {best['epoch']} kept (validation loss {best['val_loss']:.5g})")
    assert lines[5] == "  map filters:  none"
    assert lines[6].startswith("  threshold:    ") and lines[6].endswith(" (false-reject rate 0.01 on 1 good image)")
    assert lines[7] == "  promise:      about 50.0% of good parts rejected, at most 95.0% at 95% confidence"
    assert main(["info", str(trained)]) == 0  # a run folder stands for its model.ckpt, in every command
    assert capsys.readouterr().out.splitlines() == lines
    assert main(["info", str(trained.parent)]) == 2  # a folder that holds no model.ckpt
    said = f"defectmap: error: {trained.parent} is a folder without model.ckpt: give a run folder (train's --out) or a "
    assert capsys.readouterr().err == said + "checkpoint\n"
    onnx = str(tmp_path / "model.onnx")
    assert main(["export", ckpt, "--out", onnx]) == 0
    records = []
    for model in (ckpt, onnx):
        capsys.readouterr()
        assert main(["info", model, "--json"]) == 0
        records.append(json.loads(capsys.readouterr().out))
    from_ckpt, from_onnx = records
    assert from_ckpt["parameters"] > 0 and from_onnx["parameters"] is None  # onnxruntime holds the weights
    for record in (from_ckpt, from_onnx):
        record.pop("file"), record.pop("bytes"), record.pop("parameters"), record.pop("versions")
    assert from_ckpt == from_onnx  # the export carries every record `info` reads
    assert from_ckpt["epochs"] == len(history) and from_ckpt["training_normals"]["train"] == 7
    assert from_ckpt["optimizer_steps"] == steps


def test_the_run_length_counts_validations_only_where_some_epochs_did_not_validate():
    from defectmap.describe import run_length, validations

    # A 25-image PRN run raised by train.min_steps validates 12 of its 340 epochs; a run that validates every epoch,
    # and a history from before the step count, say less.
    assert run_length(340, 1020, 226.4, 12) == "340 epochs (1020 optimizer steps, validated 12 times) in 3 min 46 s"
    assert run_length(2, 2, 1.0, 2) == "2 epochs (2 optimizer steps) in 0 min 1 s"
    assert run_length(5, None, 61.0) == "5 epochs in 1 min 1 s"
    assert run_length(3, 3, 0.0, 1) == "3 epochs (3 optimizer steps, validated 1 time) in 0 min 0 s"
    assert validations([{"val_loss": None}, {"val_loss": 0.5}, {"val_loss": None}, {"val_loss": 0.4}]) == 2

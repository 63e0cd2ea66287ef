"""Training options: mixed precision and channels-last run and change the arithmetic; bad values are clear."""

import json
from importlib import resources

import pytest
import torch

from defectmap import engine, stopping, training
from defectmap.config import apply_overrides, build_config, resolve_config
from defectmap.data.mvtec import open_category
from defectmap.describe import describe, kept_epoch
from defectmap.errors import ConfigError, DefectmapError
from tests.conftest import tiny_config


def trained_weights(root, out, **train):
    cfg = tiny_config("ae", root, epochs=1)
    apply_overrides(cfg, {"train": train})
    return torch.load(training.fit(cfg, out, progress=False), weights_only=True)["state_dict"]


def falling_probe(monkeypatch) -> list:
    """Replace the synthetic probe (train.select=probe) with one that rates each validation worse than the one before
    (1, 1/2, 1/3, ...), so the first validated epoch is the best; returns the list its calls are counted in."""
    calls = []

    def falling_quality(*args):
        calls.append(1)
        return {"quality": 1 / len(calls), "map_max_auroc": 0.5, "pixel_auroc": 0.5}

    monkeypatch.setattr(training, "_probe_quality", falling_quality)
    return calls


def test_bf16_autocast_and_channels_last_on_cpu(tiny_dataset, tmp_path):
    plain = trained_weights(tiny_dataset, tmp_path / "plain", channels_last=False)
    bf16 = trained_weights(tiny_dataset, tmp_path / "bf16", amp="bf16", channels_last=False)
    nhwc = trained_weights(tiny_dataset, tmp_path / "nhwc", channels_last=True)
    assert all(torch.isfinite(v.float()).all() for v in bf16.values())
    weights = [k for k, v in plain.items() if v.is_floating_point()]
    assert any(not torch.equal(plain[k], bf16[k]) for k in weights)  # autocast really ran in bf16
    for k in weights:
        torch.testing.assert_close(nhwc[k], plain[k], atol=1e-5, rtol=1e-4)  # same maths, other layout


@pytest.mark.parametrize("channels_last", [True, False])
def test_checkpoints_load_in_the_layout_they_were_trained_in(tiny_dataset, tmp_path, channels_last):
    cfg = tiny_config("ae", tiny_dataset, epochs=1)
    apply_overrides(cfg, {"train": {"channels_last": channels_last}})
    detector = engine.load(training.fit(cfg, tmp_path / "run", progress=False))
    convs = [m.weight for m in detector.model.modules() if isinstance(m, torch.nn.Conv2d)]
    convs = [w for w in convs if w[0, 0].numel() > 1]  # a 1x1 kernel is contiguous in both layouts
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) == channels_last for w in convs)


@pytest.mark.parametrize("amp,message", [("fp16", "needs a CUDA device"), ("fp8", "must be off, bf16 or fp16")])
def test_bad_amp_settings(tiny_dataset, tmp_path, amp, message):
    if amp == "fp16" and torch.cuda.is_available():
        pytest.skip("fp16 is valid where CUDA is present")
    with pytest.raises(DefectmapError, match=message):
        trained_weights(tiny_dataset, tmp_path / "x", amp=amp)


@pytest.mark.slow
def test_compiled_training_step_matches_eager(tiny_dataset, tmp_path):
    plain = trained_weights(tiny_dataset, tmp_path / "plain")
    compiled = trained_weights(tiny_dataset, tmp_path / "compiled", compile=True)
    for k, v in plain.items():
        if v.is_floating_point():
            torch.testing.assert_close(compiled[k], v, atol=1e-4, rtol=1e-3)  # same maths, fused kernels


def test_each_run_sets_deterministic_algorithms_as_its_config_says(tiny_dataset, tmp_path):
    # Only changed when it differs (setting it imports torch's compiler, about a second), but always to the config's.
    try:
        for deterministic in (True, True, False, False):
            training.fit(tiny_config("ae", tiny_dataset, deterministic=deterministic), tmp_path / "run", progress=False)
            assert torch.are_deterministic_algorithms_enabled() is deterministic
    finally:
        torch.use_deterministic_algorithms(False)


def test_training_without_validation_images_warns_that_the_threshold_comes_from_training_images(tiny_dataset, tmp_path):
    cfg = tiny_config("ae", tiny_dataset)
    apply_overrides(cfg, {"data": {"val_fraction": 0.0}})
    with pytest.warns(UserWarning, match="no validation images .* hold some out with data.val_fraction"):
        training.fit(cfg, tmp_path / "run", progress=False)


def test_the_epoch_line_and_history_give_each_loss_term_of_a_model_with_several(tiny_dataset, tmp_path, capsys):
    training.fit(tiny_config("daad", tiny_dataset, epochs=2), tmp_path / "daad")  # DAAD+: generator and discriminator
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    history = json.loads((tmp_path / "daad" / "history.json").read_text())
    assert len(lines) == len(history) == 2
    for line, epoch in zip(lines, history, strict=True):
        terms = epoch["losses"]
        assert {"mse", "adversarial", "feature_matching", "discriminator_loss", "loss"} <= terms.keys()
        assert f"discriminator_loss {terms['discriminator_loss']:.4g}" in line and "val loss" in line
    training.fit(tiny_config("ae", tiny_dataset, epochs=1), tmp_path / "ae")  # one term: the line stays short
    assert "(" not in capsys.readouterr().out.split("epoch 1: ")[1].splitlines()[0]


def test_selecting_on_the_synthetic_probe_keeps_the_epoch_that_scores_best_there(tiny_dataset, tmp_path, capsys):
    from defectmap.data.dataset import synthetic_probe
    from defectmap.engine import load
    from defectmap.granularity import synthetic_validation_scores

    cfg = tiny_config("ae", tiny_dataset, epochs=3, patience=0)
    apply_overrides(cfg, {"train": {"select": "probe"}})
    ckpt = training.fit(cfg, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    qualities = [epoch["probe"]["quality"] for epoch in history]
    assert all(0 <= q <= 1 for q in qualities) and len(set(qualities)) > 1
    assert f"probe {qualities[0]:.4f}" in capsys.readouterr().out
    # The kept weights are the best epoch's: scored on the same probe, they give its quality.
    detector = load(ckpt, device="cpu")
    _, val_set = training._loaded_datasets(detector.config, open_category(detector.config.data), False)
    probe = synthetic_probe(val_set, cfg.data.texture_dir, cfg.train.seed)
    scores = synthetic_validation_scores(detector.model, probe, 4, detector.device)
    assert (scores["map_max_auroc"] + scores["pixel_auroc"]) / 2 == pytest.approx(max(qualities))
    described = describe(detector)  # what `info` says was kept, and why
    assert described["kept_on"] == {"measure": "synthetic-probe quality", "value": max(qualities)}
    assert described["best_epoch"] == qualities.index(max(qualities)) + 1


def test_selecting_on_the_probe_without_validation_images_is_a_one_line_error(tiny_dataset, tmp_path):
    cfg = tiny_config("ae", tiny_dataset)
    apply_overrides(cfg, {"train": {"select": "probe"}, "data": {"val_fraction": 0.0}})
    with pytest.raises(ConfigError, match="train.select=probe needs validation images: set data.val_fraction above 0"):
        training.fit(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("patience_steps,min_steps,epochs_run", [(0, 0, 2), (3, 0, 4), (0, 4, 4)])
def test_patience_steps_and_min_steps_keep_training_until_that_many_steps_passed(
    tiny_dataset, tmp_path, monkeypatch, capsys, patience_steps, min_steps, epochs_run
):
    # Epoch 1 is the best; 6 training images in batches of 4 are 1 step an epoch (the incomplete batch is dropped).
    # Patience 1 alone stops after epoch 2; with 3 patience steps as well, once 3 steps passed since epoch 1: after
    # epoch 4; with 4 steps at least (train.min_steps), not before step 4: after epoch 4 too.
    calls = falling_probe(monkeypatch)
    cfg = tiny_config("ae", tiny_dataset, epochs=6, patience=1, patience_steps=patience_steps, min_steps=min_steps)
    apply_overrides(cfg, {"train": {"select": "probe"}})
    training.fit(cfg, tmp_path / "run")
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == len(calls) == epochs_run
    waited = {2: "1 epoch, 1 optimizer step", 4: "3 epochs, 3 optimizer steps"}[epochs_run]
    out = capsys.readouterr().out
    assert f"early stopping after epoch {epochs_run} of 6: {waited}, without improvement" in out
    assert "training on 6 images, validating on 2 images: 1 optimizer step an epoch, at most 6 in 6 epochs\n" in out


def test_min_steps_raises_the_epochs_of_a_run_on_few_images(tiny_dataset, tmp_path, capsys):
    # 1 step an epoch: 1 epoch given, 3 steps at least, so 3 epochs train, and the run says why.
    training.fit(tiny_config("ae", tiny_dataset, epochs=1, patience=0, min_steps=3), tmp_path / "run")
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 3
    assert "1 optimizer step an epoch, at most 3 in 3 epochs (train.epochs=1, raised to take train.min_steps=3)" in (
        capsys.readouterr().out
    )


def test_a_run_raised_by_min_steps_validates_as_often_as_its_epochs_say(tiny_dataset, tmp_path, monkeypatch, capsys):
    # 1 step an epoch: 2 epochs given, 6 steps at least, so 6 epochs train and validate twice, after epochs 3 and 6,
    # as a 2-epoch run does; the probe rates the first validation best, so epoch 3's weights are kept: those of an
    # uninterrupted 3-epoch run, and what `info` reports.
    calls = falling_probe(monkeypatch)
    cfg = tiny_config("ae", tiny_dataset, epochs=2, patience=0, min_steps=6)
    apply_overrides(cfg, {"train": {"select": "probe"}})
    kept = torch.load(training.fit(cfg, tmp_path / "run"), weights_only=True)["state_dict"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [epoch["val_loss"] is not None for epoch in history] == [False, False, True, False, False, True]
    assert len(calls) == 2 and "probe" not in history[0] and kept_epoch(history)[0]["epoch"] == 3
    assert "at most 6 in 6 epochs (train.epochs=2, raised to take train.min_steps=6), validating every 3 epochs\n" in (
        capsys.readouterr().out
    )
    three_epochs = trained_weights(tiny_dataset, tmp_path / "three", epochs=3)
    assert all(torch.equal(kept[name], three_epochs[name]) for name in three_epochs)


def test_validate_every_sets_when_the_run_validates_and_early_stopping_looks(tiny_dataset, tmp_path, monkeypatch):
    # Every 2 epochs and after the last: epochs 2, 4, 5 of 5. With a falling validation measure and patience 1,
    # the first validation is the best and the second ends the run: 4 epochs, 2 validations.
    calls = falling_probe(monkeypatch)
    cfg = tiny_config("ae", tiny_dataset, epochs=5, patience=1, validate_every=2)
    apply_overrides(cfg, {"train": {"select": "probe"}})
    training.fit(cfg, tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history if epoch["val_loss"] is not None] == [2, 4] and len(history) == 4
    assert len(calls) == 2
    assert [stopping.validates(done, 2, 5) for done in range(1, 6)] == [False, True, False, True, True]
    assert stopping.validation_interval(cfg.train, 5) == 2
    # 0: every epoch, or as many validations as train.epochs where train.min_steps raised them (340 of 12: every 29).
    apply_overrides(cfg, {"train": {"validate_every": 0, "epochs": 12}})
    assert stopping.validation_interval(cfg.train, 12) == 1 and stopping.validation_interval(cfg.train, 340) == 29
    with pytest.raises(ConfigError, match="train.validate_every"):
        build_config("ae", None, ["train.validate_every=-1"])


def test_a_run_that_reaches_its_last_epoch_does_not_say_early_stopping_ended_it(
    tiny_dataset, tmp_path, monkeypatch, capsys
):
    # Patience 1 and a validation measure that never improves after epoch 1: epoch 2 is the last epoch anyway.
    falling_probe(monkeypatch)
    cfg = tiny_config("ae", tiny_dataset, epochs=2, patience=1)
    apply_overrides(cfg, {"train": {"select": "probe"}})
    training.fit(cfg, tmp_path / "run")
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 2
    assert "early stopping" not in capsys.readouterr().out


def test_each_method_trains_its_recipe_steps_unless_given_epochs():
    # PRN's results were measured with 1020 steps, the reconstruction models' with 630: by default a run takes at
    # least as many; a schedule given in epochs (on the command line, in a preset, or in a checkpoint made before
    # train.min_steps) is trained as given.
    assert build_config("prn", None, []).train.min_steps == 1020
    assert build_config("prn", None, ["train.epochs=24"]).train.min_steps == 0
    assert build_config("prn", None, ["train.epochs=24", "train.min_steps=500"]).train.min_steps == 500
    assert resolve_config({"method": "prn", "train": {"epochs": 12, "lr": 1e-4}}).train.min_steps == 0
    assert [build_config(m, None, []).train.min_steps for m in ("ae", "daad", "pmb")] == [630] * 3
    assert resolve_config({"method": "daad", "train": {"epochs": 15}}).train.min_steps == 0
    with pytest.raises(ConfigError, match="train.min_steps"):
        build_config("prn", None, ["train.min_steps=-1"])


def test_a_run_far_shorter_than_its_methods_recipe_is_warned_about(tiny_dataset, tmp_path):
    from defectmap.stopping import short_run_warning

    # PRN's results were measured with 1020 steps: runs of 510 and more pass, fewer are warned, unless the run sets
    # its own train.min_steps; a method that states no steps is never warned about.
    assert short_run_warning("prn", 1020, 85, 6, 0) is None and short_run_warning("prn", 0, 1, 1, 0) is None
    assert "at most 36 optimizer steps (12 epochs of 3)" in short_run_warning("prn", 1020, 3, 12, 0)  # 25 images
    assert "add train.min_steps=1020 (the run then trains at least that many) or set train.epochs=340" in (
        short_run_warning("prn", 1020, 3, 12, 0)
    )
    assert short_run_warning("prn", 1020, 3, 12, 36) is None  # steps chosen: train.min_steps=36
    with pytest.warns(UserWarning, match=r"at most 1 optimizer step \(1 epoch of 1\), and prn's results were"):
        training.fit(tiny_config("prn", tiny_dataset), tmp_path / "run", progress=False)  # epochs=1 given
    demo = build_config(None, str(resources.files("defectmap") / "presets" / "demo.yaml"), []).train
    assert (demo.epochs, demo.min_steps) == (30, 30)  # the AE's 630 would not be its own: 30 steps do on its fabric
    assert short_run_warning("ae", 630, 1, demo.epochs, demo.min_steps) is None  # on 24 images


def test_the_probe_decides_which_epoch_is_kept_and_when_patience_ends_training(tiny_dataset, tmp_path, monkeypatch):
    # The probe rates epoch 1 best and the later ones worse: with patience 2 training stops after epoch 3 and keeps
    # epoch 1's weights, the weights a one-epoch run ends with.
    calls = falling_probe(monkeypatch)
    cfg = tiny_config("ae", tiny_dataset, epochs=6, patience=2)
    apply_overrides(cfg, {"train": {"select": "probe"}})
    kept = torch.load(training.fit(cfg, tmp_path / "probe", progress=False), weights_only=True)["state_dict"]
    assert len(calls) == 3
    one_epoch = trained_weights(tiny_dataset, tmp_path / "one")
    assert all(torch.equal(kept[name], one_epoch[name]) for name in one_epoch)

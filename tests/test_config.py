"""Defaults, presets and --set overrides; unknown keys and wrong types are errors that help."""

import pytest
import torch

from defectmap.config import build_config, config_to_dict, parse_sets, resolve_config
from defectmap.engine import build_model
from defectmap.errors import ConfigError
from defectmap.models import MODELS
from tests.conftest import tiny_config


def test_set_overrides_preset_and_types(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("method: ae\ntrain:\n  epochs: 7\n  lr: 0.5\nmodel:\n  channels: [4, 8]\n")
    cfg = build_config(None, str(preset), ["train.epochs=3", "train.lr=1", "data.image_size=64"], root="R")
    assert cfg.train.epochs == 3 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.channels == (4, 8) and cfg.data.image_size == 64 and cfg.data.root == "R"


@pytest.mark.parametrize("method", list(MODELS))
def test_epochs_and_image_size_are_valid_for_every_model(method):
    cfg = build_config(method, None, ["train.epochs=2", "data.image_size=64"])
    assert cfg.method == method and cfg.train.epochs == 2 and cfg.data.image_size == 64


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*epochs"):
        build_config("ae", None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown model"):
        resolve_config({}, "nope")


def test_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match="train.epochs expects int"):
        build_config("ae", None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_sets(["train.epochs"])


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.epochs=0", "train.epochs must be at least 1, got 0"),
        ("train.batch_size=0", "train.batch_size must be at least 1"),
        ("train.lr=0", "train.lr must be above 0"),
        ("train.select=best", "train.select must be loss or probe, got 'best'"),
        ("train.false_reject_rate=1", r"train.false_reject_rate must be in \[0, 1\)"),
        ("data.anomalies=-1", "data.anomalies must be at least 0"),
        ("data.tile=32", r"data.tile_overlap must be below data.tile \(32\), got 32"),
        ("data.image_size=100", "data.image_size=100 does not fit ae as configured: use a multiple of 16, e.g. 96"),
    ],
)
def test_out_of_range_settings_are_one_line_errors(setting, message):
    with pytest.raises(ConfigError, match=message):
        build_config("ae", None, [setting])


@pytest.mark.parametrize(
    ("method", "setting", "message"),
    [
        ("ae", "model.channels=[]", r"model.channels must be a list of values above 0, got \(\)"),
        ("daad", "model.memory_items=[256,0,256]", "model.memory_items must be a list of values above 0"),
        ("daad", "model.temperature=0", "model.temperature must be a value above 0"),
        ("pmb", "model.grid=0", "model.grid must be a value above 0"),
        ("pmb", "model.query_kernel=4", "model.query_kernel must be odd"),
        ("prn", "model.top_k=0", "model.top_k must be a value above 0"),
    ],
)
def test_model_sizes_and_counts_out_of_range_are_one_line_errors(method, setting, message):
    with pytest.raises(ConfigError, match=message):
        build_model(build_config(method, None, [setting, "model.pretrained=false"] if method == "prn" else [setting]))


@pytest.mark.parametrize("method", list(MODELS))
def test_image_size_rule_accepts_exactly_the_sizes_the_model_runs(method):
    """Every size the config accepts gives a full-size map; every size it refuses would fail in the model
    (PRN's minimum is set for EfficientNet-Lite0, so smaller sizes may still run on the tests' ResNet-18)."""
    cfg = tiny_config(method)
    model = build_model(cfg).eval()
    multiple, minimum = MODELS[method].input_rule(cfg.model)
    for size in range(4, 73, 2):
        accepted = size >= minimum and size % multiple == 0
        try:
            with torch.no_grad():
                runs = model(torch.rand(1, 3, size, size)).anomaly_map.shape == (1, size, size)
        except Exception:  # noqa: BLE001 - any failure in the model counts as "does not run"
            runs = False
        assert runs if accepted else (method == "prn" or not runs), (method, size)
        if not accepted:
            values = config_to_dict(cfg)
            values["data"]["image_size"] = size
            with pytest.raises(ConfigError, match=f"data.image_size={size} does not fit {method}"):
                resolve_config(values)


def test_automatic_granularity_needs_a_size_that_fits_every_trial():
    build_config("daad", None, ["data.image_size=80"])  # the default blocks (8, 4, 2) need a multiple of 16
    build_config("daad", None, ["model.granularity=auto", "data.image_size=96"])
    with pytest.raises(ConfigError, match="data.image_size=80 does not fit daad as configured: use a multiple of 32"):
        build_config("daad", None, ["model.granularity=auto", "data.image_size=80"])  # scale 16: blocks (16, 8, 4)


@pytest.mark.parametrize("method", list(MODELS))
def test_config_command_prints_every_key_with_its_comment_and_loads_back_as_a_preset(method, tmp_path, capsys):
    from defectmap.cli import main

    assert main(["config", "--model", method]) == 0
    text = capsys.readouterr().out
    assert "  image_size: 256  # model input is image_size x image_size\n" in text  # the comment on the field's line
    assert "  anomalies: 0  # Few-shot protocol (models that learn from anomalies" in text  # the block above it
    undocumented = [line for line in text.splitlines() if line.startswith("  ") and "  # " not in line]
    assert undocumented == []  # a new config field needs a comment saying what it does
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    assert config_to_dict(build_config(None, str(preset), [])) == config_to_dict(resolve_config({}, method))

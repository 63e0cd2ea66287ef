"""Defaults, presets and --set overrides; unknown keys and wrong types are errors that help."""

import pytest

from defectmap.config import build_config, parse_sets, resolve_config
from defectmap.errors import ConfigError
from defectmap.models import MODELS


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

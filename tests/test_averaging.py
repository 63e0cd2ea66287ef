"""train.ema_decay: the averaged weights follow the formula, are the ones validated and kept, and resume exactly."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from defectmap import engine, training
from defectmap.averaging import WeightAverage
from defectmap.cli import main
from defectmap.config import apply_overrides
from defectmap.data.dataset import ImageDataset
from defectmap.data.mvtec import open_category
from defectmap.errors import ConfigError
from tests.conftest import TINY_MODEL, tiny_config


def small_model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model[0].bias.requires_grad_(False)  # a frozen tensor
    return model


def test_average_follows_the_decay_with_its_warm_up():
    model = small_model()
    start = model[0].weight.detach().clone()
    average = WeightAverage(model, decay=0.9)
    expected = start.clone()
    for step in range(1, 6):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[1].num_batches_tracked += 1
        average.update(model, step)
        decay = min(0.9, (1 + step) / (10 + step))  # 0.18, 0.25, ... then 0.9
        expected = decay * expected + (1 - decay) * model[0].weight.detach()
    torch.testing.assert_close(average.state["0.weight"], expected)
    assert torch.equal(average.state["0.bias"], model[0].bias)  # frozen: bit-identical, not merely close
    assert average.state["1.num_batches_tracked"].item() == 5  # integer buffers are copied
    assert not torch.equal(average.state["0.weight"], model[0].weight)


def test_applied_swaps_the_averaged_weights_in_and_back():
    model = small_model()
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.add_(4.0)
    average.update(model, 1)
    live = model[0].weight.detach().clone()
    with average.applied(model):
        assert torch.equal(model[0].weight, average.state["0.weight"])
    assert torch.equal(model[0].weight, live)


def validation_loss(checkpoint, cfg) -> float:
    detector = engine.load(checkpoint)
    val = ImageDataset(open_category(cfg.data).val, cfg.data.image_size)
    return training._validation_loss(detector.model, DataLoader(val, batch_size=4), torch.device("cpu"))


def test_the_kept_weights_are_the_validated_average(tiny_dataset, tmp_path):
    cfg = tiny_config("ae", tiny_dataset, epochs=3)
    apply_overrides(cfg, {"train": {"ema_decay": 0.8, "patience": 0, "channels_last": False}})
    checkpoint = training.fit(cfg, tmp_path / "ema", progress=False)
    history = json.loads((tmp_path / "ema" / "history.json").read_text())
    best = min(epoch["val_loss"] for epoch in history)
    assert all(epoch["averaged_weights"] for epoch in history)
    assert validation_loss(checkpoint, cfg) == pytest.approx(best, rel=1e-5)
    plain = tiny_config("ae", tiny_dataset, epochs=3)
    apply_overrides(plain, {"train": {"patience": 0, "channels_last": False}})
    other = torch.load(training.fit(plain, tmp_path / "plain", progress=False), weights_only=True)["state_dict"]
    kept = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert any(not torch.equal(kept[k], other[k]) for k in kept if kept[k].is_floating_point())


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_decay_out_of_range_is_a_config_error(decay):
    with pytest.raises(ConfigError, match=r"train.ema_decay must be in \[0, 1\)"):
        tiny_config("ae", ema_decay=decay)


def test_train_says_it_kept_averaged_weights(tiny_dataset, tmp_path, capsys):
    sets = ["data.image_size=32", "train.epochs=1", "train.ema_decay=0.9", "train.device=cpu",
            f"model.channels={list(TINY_MODEL['ae']['channels'])}"]  # fmt: skip
    args = ["train", "--model", "ae", "--data", str(tiny_dataset), "--category", "tiny", "--out", str(tmp_path / "r")]
    assert main([*args, "--quiet", *(a for s in sets for a in ("--set", s))]) == 0
    assert "; the averaged weights of epoch 1, the lowest validation loss" in capsys.readouterr().out

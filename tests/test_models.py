"""One contract test over every entry of MODELS."""

import copy

import pytest
import torch

from defectmap.checkpoint import load_checkpoint, save_checkpoint
from defectmap.config import config_to_dict
from defectmap.engine import build_model, load
from defectmap.models import MODELS
from tests.conftest import TINY_MODEL, tiny_config


def test_every_model_has_a_tiny_test_config():
    assert set(TINY_MODEL) == set(MODELS)


def batch_of(images: torch.Tensor) -> dict:
    n, _, h, w = images.shape
    return {"image": images, "mask": torch.zeros(n, h, w), "label": torch.zeros(n, dtype=torch.long)}


@pytest.mark.parametrize("method", list(MODELS))
def test_model_contract(method, tmp_path):
    cfg = tiny_config(method)
    torch.manual_seed(0)
    model = build_model(cfg)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    for mode in (model.train, model.eval):
        mode()
        out = model(images)
        assert out.score.shape == (3,)
        assert out.anomaly_map.shape == (3, 32, 32)
        assert torch.isfinite(out.score).all() and torch.isfinite(out.anomaly_map).all()

    # one optimisation step changes parameters
    model.train()
    model.prepare([images])
    before = copy.deepcopy(model.state_dict())
    losses = model.loss(batch_of(images))
    assert torch.isfinite(losses["loss"])
    for i, (name, params) in enumerate(model.optimizer_groups().items()):
        optimizer = torch.optim.Adam(params, lr=1e-2)
        optimizer.zero_grad()
        losses[name].backward(retain_graph=i < len(model.optimizer_groups()) - 1)
        optimizer.step()
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "a training step changed no parameter"

    # save -> load gives identical output
    model.eval()
    expected = model(images)
    path = tmp_path / "model.ckpt"
    save_checkpoint(path, model=model, config=config_to_dict(cfg), calibration={"threshold": 1.0})
    detector = load(path, device="cpu")
    got = detector.model(images)
    assert torch.equal(got.score, expected.score)
    assert torch.equal(got.anomaly_map, expected.anomaly_map)
    assert load_checkpoint(path)["config"]["method"] == method


@pytest.mark.parametrize("method", list(MODELS))
def test_same_seed_same_model(method):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model(tiny_config(method)).eval()
        outputs.append(model(images).anomaly_map)
    assert torch.equal(outputs[0], outputs[1])
    torch.manual_seed(124)
    other = build_model(tiny_config(method)).eval()(images).anomaly_map
    assert not torch.equal(outputs[0], other)

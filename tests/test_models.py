"""One contract test over every entry of MODELS."""

import copy
import math
import warnings

import pytest
import torch

from defectmap.checkpoint import load_checkpoint, save_checkpoint
from defectmap.config import config_to_dict
from defectmap.engine import build_model, load
from defectmap.errors import ConfigError
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


def test_daad_auto_granularity_picks_a_scale_on_synthetic_anomalies(tiny_dataset, tmp_path, capsys, terminal_stderr):
    import json

    from defectmap import training
    from defectmap.config import apply_overrides

    cfg = tiny_config("daad", tiny_dataset, min_steps=3)
    apply_overrides(cfg, {"data": {"val_fraction": 0.5}, "model": {"granularity": "auto", "auto_scales": [1, 4],
                                                                    "auto_epochs": 1}})  # fmt: skip
    terminal = terminal_stderr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ckpt = training.fit(cfg, tmp_path / "run", progress=True)
    captured = capsys.readouterr()  # the trials show a bar and one line each
    # The trials train model.auto_epochs as given, not the run's train.min_steps, and warn of no short run
    assert not [w for w in caught if "optimizer step" in str(w.message)]
    for scale in (1, 4):
        assert len(json.loads((tmp_path / "run" / "granularity" / f"scale{scale}" / "history.json").read_text())) == 1
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) >= 3
    assert "granularity trials" in terminal.getvalue()
    assert "granularity scale 4: synthetic image AUROC" in captured.out
    record = json.loads((tmp_path / "run" / "granularity.json").read_text())
    assert [t["scale"] for t in record["trials"]] == [1, 4]
    assert all(0 <= t["image_auroc"] <= 1 and 0 <= t["pixel_auroc"] <= 1 for t in record["trials"])
    best = max(record["trials"], key=lambda t: t["image_auroc"] + t["pixel_auroc"])
    saved = torch.load(ckpt, weights_only=True)["config"]["model"]
    assert saved["granularity"] == f"auto:{best['scale']}"
    assert list(saved["block_sizes"]) == best["block_sizes"] == [max(1, best["scale"] // 2**lv) for lv in (0, 1)]


@pytest.mark.parametrize("informative", [0, 1])
def test_daad_fusion_weight_is_chosen_on_the_synthetic_probe(informative, monkeypatch):
    cfg = copy.deepcopy(tiny_config("daad"))
    model = build_model(cfg).eval()
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 20 + [1] * 20)

    def raw_scores(images):  # in the probe, component `informative` separates the classes, the other is loud noise
        raw = torch.rand(len(images), 2, generator=generator)
        if len(images) == len(labels):
            raw[:, informative] += labels
            raw[:, 1 - informative] *= 10
        return None, raw

    monkeypatch.setattr(model, "_raw_scores", raw_scores)
    images = torch.zeros(len(labels), 3, 8, 8)
    assert model.calibrate([images[:16]], [(images, labels)]) == {"latent_weight": float(informative)}
    assert model.cfg.latent_weight == informative
    model.cfg.fusion, model.cfg.latent_weight = "fixed", 0.5
    assert model.calibrate([images[:16]], [(images, labels)]) == {} and model.cfg.latent_weight == 0.5


def test_daad_records_the_chosen_fusion_weight(tiny_dataset, tmp_path):
    from defectmap import training

    cfg = tiny_config("daad", tiny_dataset)
    cfg.model.latent_weight = 0.3  # not a candidate: the saved value proves a choice was made and recorded
    ckpt = training.fit(cfg, tmp_path / "run", progress=False)
    saved = torch.load(ckpt, weights_only=True)["config"]["model"]
    assert saved["fusion"] == "synthetic" and saved["latent_weight"] in saved["fusion_weights"]
    assert load(ckpt, device="cpu").model.cfg.latent_weight == saved["latent_weight"]


@pytest.mark.parametrize(("gan_loss", "chance"), [("bce", 2 * math.log(2)), ("hinge", 2.0)])
def test_daad_gan_losses_sit_at_chance_for_an_undecided_discriminator_and_fall_for_a_sure_one(gan_loss, chance):
    cfg = copy.deepcopy(tiny_config("daad"))
    cfg.model.gan_loss = gan_loss
    model = build_model(cfg)
    undecided = torch.zeros(2, 4, 4)
    assert model.discriminator_objective(undecided, undecided).item() == pytest.approx(chance)
    sure = model.discriminator_objective(undecided + 3, undecided - 3).item()  # real high, reconstruction low
    assert sure < 0.1 * chance
    # The generator's term falls as the discriminator takes reconstructions for real images.
    assert model.generator_adversarial(undecided + 3) < model.generator_adversarial(undecided)
    assert model.generator_adversarial(undecided - 3) > model.generator_adversarial(undecided)


def test_daad_discriminator_trains_at_its_own_learning_rate(tiny_dataset, tmp_path):
    from defectmap import training
    from defectmap.config import apply_overrides

    cfg = tiny_config("daad", tiny_dataset, epochs=1)
    apply_overrides(cfg, {"train": {"lr": 2e-3}, "model": {"discriminator_lr_scale": 4, "gan_loss": "hinge"}})
    training.fit(cfg, tmp_path / "run", progress=False)
    saved = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["optimizers"]
    rates = {name: [group["lr"] for group in state["param_groups"]] for name, state in saved.items()}
    assert rates == {"loss": [2e-3], "discriminator_loss": [8e-3]}
    cfg.model.gan_loss = "wasserstein"
    with pytest.raises(ConfigError, match="model.gan_loss must be bce or hinge"):
        build_model(cfg)

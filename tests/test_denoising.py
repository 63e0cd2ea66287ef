"""Denoising training of the reconstruction models (`model.denoise_share`): an anomaly in, the clean image as target."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from defectmap import training
from defectmap.config import apply_overrides
from defectmap.data.dataset import AnomalyMixDataset, ImageDataset
from defectmap.data.mvtec import open_category
from defectmap.engine import build_model
from defectmap.errors import ConfigError
from defectmap.models.ae import Autoencoder, denoising_mix
from tests.conftest import tiny_config

RECONSTRUCTION = ["ae", "daad", "pmb"]


def test_denoising_items_carry_the_clean_image_they_were_made_from(tiny_dataset):
    normals = ImageDataset(open_category(tiny_config("ae", tiny_dataset).data).train, 32)
    items = [AnomalyMixDataset(normals, denoising_mix(0.5), seed=s)[i] for s in range(3) for i in range(len(normals))]
    for n, item in enumerate(items):
        assert torch.equal(item["clean"], normals[n % len(normals)]["image"])
        changed = (item["image"] - item["clean"]).abs().amax(0) > 0
        assert bool(item["label"]) == bool(changed.any())
        assert not changed[item["mask"] == 0].any()  # the mask marks every pixel the anomaly altered
    anomalous = sum(int(item["label"]) for item in items)
    assert 0.25 * len(items) < anomalous < 0.75 * len(items)


@pytest.mark.parametrize("method", RECONSTRUCTION)
def test_reconstruction_losses_compare_the_output_with_the_clean_image(method):
    model = build_model(tiny_config(method)).eval()  # eval: the same reconstruction on every call
    torch.manual_seed(0)
    clean = torch.rand(2, 3, 32, 32)
    corrupted = clean.clone()
    corrupted[:, :, 8:20, 8:20] = 1.0
    recon = model.reconstruct(corrupted)
    recon = recon[0] if isinstance(recon, tuple) else recon
    batch = {"image": corrupted, "clean": clean}
    losses = model.loss(batch)
    assert torch.allclose(losses["mse"], F.mse_loss(recon, clean))
    assert not torch.allclose(losses["mse"], F.mse_loss(recon, corrupted))
    if method == "daad":  # the discriminator takes the clean image as the real one
        assert torch.allclose(model.validation_loss(batch), F.mse_loss(recon, clean))
        _, real = model.discriminator(clean)
        _, fake = model.discriminator(recon)
        assert torch.allclose(losses["feature_matching"], F.mse_loss(fake, real))
    # Without a clean image the input is the target, as in the papers' training.
    assert torch.allclose(model.loss({"image": corrupted})["mse"], F.mse_loss(recon, corrupted))


@pytest.mark.parametrize("method", RECONSTRUCTION)
def test_only_a_denoise_share_gives_a_reconstruction_model_an_anomaly_mix(method):
    assert build_model(tiny_config(method)).anomaly_mix is None
    cfg = tiny_config(method)
    apply_overrides(cfg, {"model": {"denoise_share": 0.25}})
    mix = build_model(cfg).anomaly_mix
    assert (mix.normal_share, mix.real_share, mix.clean_target) == (0.75, 0.0, True)


def test_training_with_a_denoise_share_rebuilds_clean_images_from_anomalous_ones(tiny_dataset, tmp_path, monkeypatch):
    seen = []
    loss = Autoencoder.loss

    def spy(self, batch):
        seen.append((len(batch["image"]), batch["label"].sum().item(), torch.equal(batch["image"], batch["clean"])))
        return loss(self, batch)

    monkeypatch.setattr(Autoencoder, "loss", spy)
    cfg = tiny_config("ae", tiny_dataset, epochs=2, batch_size=6)
    apply_overrides(cfg, {"model": {"denoise_share": 1.0}})
    path = training.fit(cfg, tmp_path / "run", progress=False)
    # Each epoch: one training batch of the 6 training normals, then the validation loss on the 2 validation ones,
    # every image with an anomaly pasted in (share 1) and the clean one beside it.
    assert path.exists() and seen == [(6, 6, False), (2, 2, False)] * 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": {"denoise_share": 1.5}}, "model.denoise_share must be in"),
        ({"model": {"denoise_share": 0.5}, "data": {"anomalies": 2}}, "ae learns from normal images only"),
    ],
)
def test_bad_denoising_settings_are_one_line_errors_before_anything_is_written(tiny_dataset, tmp_path, values, message):
    cfg = tiny_config("ae", tiny_dataset)
    apply_overrides(cfg, values)
    with pytest.raises(ConfigError, match=message):
        training.fit(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()

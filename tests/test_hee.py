"""Error-map post-processing: HEE's property tests, HEE, the SSIM map and the feature-distance map inside a model
(forward and ONNX export), and bench/postprocess.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from defectmap import training
from defectmap.config import apply_overrides
from defectmap.data.mvtec import open_category
from defectmap.engine import Detector, build_model, evaluate, load
from defectmap.errors import ConfigError
from defectmap.export import export
from defectmap.models.hee import ErrorMapFilter, PostprocessConfig, histogram_error_estimation
from defectmap.models.ssim import ssim_map
from defectmap.outputs import METRIC_NAMES
from tests.conftest import tiny_config

SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-6, 1e3), batch=st.integers(1, 4), bins=st.integers(4, 128))
def test_never_raises_a_pixel(seed, scale, batch, bins):
    errors = torch.rand(batch, 17, 23, generator=torch.Generator().manual_seed(seed)) ** 3 * scale
    cleaned = histogram_error_estimation(errors, bins=bins)
    assert cleaned.shape == errors.shape
    assert (cleaned >= 0).all() and (cleaned <= errors).all()


@SETTINGS
@given(value=st.floats(0, 1e4), batch=st.integers(1, 3))
def test_constant_error_image_maps_to_zero(value, batch):
    assert (histogram_error_estimation(torch.full((batch, 9, 9), value)) == 0).all()


def test_bright_blob_on_flat_background_survives():
    rng = np.random.default_rng(0)
    errors = torch.from_numpy(0.01 + 0.002 * rng.random((2, 64, 64))).float()
    errors[0, 20:26, 30:36] = 0.5  # a defect: far above the background mode
    cleaned = histogram_error_estimation(errors)
    assert cleaned[0, 20:26, 30:36].min() > 0.45  # the blob keeps almost all of its error
    background = torch.ones(64, 64, dtype=torch.bool)
    background[20:26, 30:36] = False
    assert cleaned[0][background].max() < 0.005  # the background error is (nearly) gone
    assert cleaned[1].max() < 0.005


def test_images_are_independent_and_batched():
    errors = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    together = histogram_error_estimation(errors)
    for i in range(3):
        assert torch.equal(together[i], histogram_error_estimation(errors[i : i + 1])[0])


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("method", ["ae", "daad", "pmb"])
def test_hee_in_a_model_exports_with_parity(method, normalize, tmp_path):
    pytest.importorskip("onnxruntime")
    cfg = tiny_config(method)
    apply_overrides(cfg, {"postprocess": {"hee": True, "normalize": normalize}})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    normals = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model.calibrate([normals[:2], normals[2:]])
    assert model.error_filter.expected.shape == ((32, 32) if normalize else (0,))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    reference = model(images)
    assert (reference.anomaly_map >= 0).all()
    detector = Detector(model, cfg, {"threshold": 1.0}, torch.device("cpu"), {})
    exported = load(export(detector, tmp_path / "m.onnx"), device="cpu")
    got = exported.model(images)
    np.testing.assert_allclose(got.anomaly_map.numpy(), reference.anomaly_map.detach().numpy(), atol=1e-5)


def test_ssim_is_one_for_identical_images_and_drops_where_they_differ():

    x = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim_map(x, x), torch.ones(2, 24, 20))
    y = x.clone()
    y[0, :, 4:10, 4:10] = 1 - y[0, :, 4:10, 4:10]
    s = ssim_map(x, y)
    assert s[0, 6:8, 6:8].max() < 0.5 and s[0, 18:, 14:].min() > 0.999 and torch.equal(s[1], torch.ones(24, 20))


@pytest.mark.parametrize("method", ["ae", "daad", "pmb"])
def test_ssim_error_map_in_every_reconstruction_model(method, tmp_path):
    """`model.error=ssim` maps 1 - SSIM of the reconstruction, through the same filter, and exports with parity."""
    pytest.importorskip("onnxruntime")
    cfg = tiny_config(method)
    apply_overrides(cfg, {"model": {"error": "ssim", "smoothing_sigma": 0.0}})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    recon = model.reconstruct(images)
    recon = recon[0] if isinstance(recon, tuple) else recon
    expected = 1 - ssim_map(images, recon)
    got = model(images).anomaly_map
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, (images - recon).pow(2).mean(1))  # not the squared error
    detector = Detector(model, cfg, {"threshold": 1.0}, torch.device("cpu"), {})
    exported = load(export(detector, tmp_path / "m.onnx"), device="cpu")
    np.testing.assert_allclose(exported.model(images).anomaly_map.numpy(), got.detach().numpy(), atol=1e-5)
    apply_overrides(cfg, {"model": {"error": "l1"}})
    with pytest.raises(ConfigError, match="model.error must be l2, ssim, features, got 'l1'"):
        build_model(cfg)


def features_config(method: str, root="", weights: str = ""):
    cfg = tiny_config(method, root)
    apply_overrides(cfg, {"model": {"error": "features", "feature_backbone": "resnet18", "feature_levels": [0, 1],
                                    "feature_weights": weights, "smoothing_sigma": 0.0}})  # fmt: skip
    return cfg


@pytest.fixture
def stub_weights(tmp_path):
    """A random-init ResNet-18 state dict standing in for ImageNet's file."""
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.mark.parametrize("method", ["ae", "daad", "pmb"])
def test_feature_error_map_in_every_reconstruction_model(method, tmp_path):
    """`model.error=features`: zero for a perfect reconstruction, local to what changed, the model's map through the
    same filter, and an ONNX export that carries the backbone."""
    pytest.importorskip("onnxruntime")
    cfg = features_config(method)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(model.error(images, images), torch.zeros(2, 32, 32))
    changed = images.clone()
    changed[:, :, 20:28, 20:28] = 1 - changed[:, :, 20:28, 20:28]
    error = model.error(images, changed)
    assert error.shape == (2, 32, 32) and error[:, 22:26, 22:26].mean() > 10 * error[:, :6, :6].mean()
    recon = model.reconstruct(images)
    recon = recon[0] if isinstance(recon, tuple) else recon
    got = model(images).anomaly_map
    torch.testing.assert_close(got, model.error(images, recon))
    assert not torch.allclose(got, (images - recon).pow(2).mean(1))  # not the squared error
    detector = Detector(model, cfg, {"threshold": 1.0}, torch.device("cpu"), {})
    exported = load(export(detector, tmp_path / "m.onnx"), device="cpu")
    np.testing.assert_allclose(exported.model(images).anomaly_map.numpy(), got.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_feature_error_trains_from_the_weights_file_and_the_checkpoint_carries_it(tiny_dataset, tmp_path, stub_weights):
    checkpoint = training.fit(features_config("ae", tiny_dataset, str(stub_weights)), tmp_path / "run", progress=False)
    backbone = load(checkpoint, device="cpu").model.error.backbone.net.state_dict()
    expected = torch.load(stub_weights, weights_only=True)
    assert all(torch.equal(backbone[key], expected[key]) for key in expected)
    missing = features_config("ae", tiny_dataset, str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="no ImageNet weights for resnet18 at .*nope.pth"):
        training.fit(missing, tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2").exists()


def test_postprocess_script_rescores_a_checkpoint_trained_with_the_feature_error(tiny_dataset, tmp_path, stub_weights):
    # Its backbone is in the checkpoint: kept for `features` (no weights file needed any more), dropped for `none`.
    checkpoint = training.fit(features_config("ae", tiny_dataset, str(stub_weights)), tmp_path / "run", progress=False)
    stub_weights.unlink()
    own = evaluate(load(checkpoint), open_category(tiny_config("ae", tiny_dataset).data), progress=False)
    script = Path(__file__).resolve().parents[1] / "bench" / "postprocess.py"
    out = tmp_path / "post.json"
    args = [sys.executable, str(script), str(checkpoint), "--out", str(out), "--variants", "none,features"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    plain, features = json.loads(out.read_text())["runs"]
    assert plain["error"] == "l2" and features["error"] == "features"
    assert features["pixel_auroc"] == pytest.approx(own["pixel_auroc"]) != plain["pixel_auroc"]


@pytest.mark.parametrize("levels", [[], [4], [0, -1]])
def test_feature_levels_outside_the_backbone_are_a_config_error(levels):
    cfg = features_config("ae")
    apply_overrides(cfg, {"model": {"feature_levels": levels}})
    with pytest.raises(ConfigError, match="model.feature_levels must list backbone levels 0-3"):
        build_model(cfg)


def test_position_normalisation_removes_what_every_normal_shares():
    """Normals are hard to rebuild along the border; after `fit` the border no longer outranks a real defect."""
    post = PostprocessConfig(normalize=True)
    border = torch.full((32, 32), 0.01)
    border[:, :3] = border[:, -3:] = 1.0
    noise = torch.Generator().manual_seed(0)
    normals = border * (1 + 0.1 * torch.rand(20, 32, 32, generator=noise))
    defective = normals[:1].clone()
    defective[0, 14:18, 14:18] += 0.2  # weaker than the border, far above what normals show there
    plain, normalising = ErrorMapFilter(PostprocessConfig(), 1.0), ErrorMapFilter(post, 1.0)
    assert normalising(defective).equal(plain(defective))  # identity until fitted
    normalising.fit([normals[:8], normals[8:]])
    centre = (slice(12, 20), slice(12, 20))
    assert plain(defective)[0][centre].max() < plain(defective)[0].max()  # the border wins without it
    assert normalising(defective)[0][centre].max() == normalising(defective)[0].max()
    assert normalising(defective).flatten(1).amax(1) > 3 * normalising(normals[1:2]).flatten(1).amax(1)


def test_position_normalisation_state_is_saved_only_when_on():
    off = ErrorMapFilter(PostprocessConfig(), 1.0)
    off.fit([torch.rand(2, 8, 8)])
    assert "expected" not in off.state_dict() and off.expected.numel() == 0
    on = ErrorMapFilter(PostprocessConfig(normalize=True), 1.0)
    on.fit([torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))])
    fresh = ErrorMapFilter(PostprocessConfig(normalize=True), 1.0)
    fresh.load_state_dict(on.state_dict())  # the (H, W) shape comes from the checkpoint
    errors = torch.rand(3, 8, 8)
    assert fresh(errors).equal(on(errors))
    larger = torch.rand(1, 16, 16)  # another input size: the expected difference is resized to it
    assert fresh(larger).shape == (1, 16, 16) and not fresh(larger).equal(off(larger))
    with pytest.raises(ValueError, match="at least one"):
        fresh.fit([])


def test_postprocess_script_scores_the_same_weights_under_each_variant(tiny_dataset, tmp_path, stub_weights):
    ckpt = training.fit(tiny_config("ae", tiny_dataset), tmp_path / "run", progress=False)
    detector = load(ckpt)
    own = evaluate(detector, open_category(detector.config.data), progress=False)
    script = Path(__file__).resolve().parents[1] / "bench" / "postprocess.py"
    out = tmp_path / "post.json"
    args = [sys.executable, str(script), str(ckpt), "--out", str(out)]
    resnet = ["--set", "model.feature_backbone=resnet18", "--set", f"model.feature_weights={stub_weights}"]
    done = subprocess.run([*args, "--variants", "none,ssim+hee,features", *resnet], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    plain, ssim, features = json.loads(out.read_text())["runs"]
    assert plain["error"] == "l2" and not plain["hee"] and plain["pixel_auroc"] == pytest.approx(own["pixel_auroc"])
    assert ssim["error"] == "ssim" and ssim["hee"] and not ssim["normalize"]
    assert ssim["pixel_auroc"] != plain["pixel_auroc"]
    assert features["error"] == "features" and len({plain["pixel_auroc"], features["pixel_auroc"]}) == 2
    done = subprocess.run([*args, "--variants", "features", *resnet, "--set", "model.feature_levels=[1]"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    [level1] = json.loads(out.read_text())["runs"]
    assert level1["error"] == "features" and level1["pixel_auroc"] != features["pixel_auroc"]
    bad = subprocess.run([*args, "--variants", "ssim+features"], capture_output=True, text=True)
    assert bad.returncode == 2 and "one error kind at most" in bad.stderr
    bad = subprocess.run([*args, "--variants", "ssim+l1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown variant 'ssim+l1'" in bad.stderr
    bad = subprocess.run([*args, "--variants", "choose+hee"], capture_output=True, text=True)
    assert bad.returncode == 2 and "choose sets normalize and hee itself" in bad.stderr


@pytest.mark.parametrize(
    ("method", "probe_aurocs", "chosen"),
    [("ae", [0.5, 0.6, 0.9, 0.7], (True, False)), ("daad", [0.6, 0.8, 0.7, 0.8], (False, True))],
)
def test_choose_keeps_the_best_combination_on_synthetic_anomalies(
    method, probe_aurocs, chosen, tiny_dataset, tmp_path, monkeypatch
):
    # The four combinations are scored in the order (off, off), (off, hee), (normalize, off), (normalize, hee);
    # the first best wins. The run must then equal a run trained with the chosen steps set by hand.
    normalize, hee = chosen
    manual = tiny_config(method, tiny_dataset)
    apply_overrides(manual, {"postprocess": {"normalize": normalize, "hee": hee}})
    by_hand = load(training.fit(manual, tmp_path / "manual", progress=False))
    aurocs = iter(probe_aurocs)
    monkeypatch.setattr(training, "image_auroc", lambda labels, scores: next(aurocs))
    cfg = tiny_config(method, tiny_dataset)
    apply_overrides(cfg, {"postprocess": {"choose": "synthetic"}})
    chose = load(training.fit(cfg, tmp_path / "chose", progress=False))
    assert next(aurocs, None) is None  # all four were scored
    post = chose.config.postprocess
    assert (post.choose, post.normalize, post.hee) == ("synthetic", normalize, hee)
    assert ("error_filter.expected" in chose.model.state_dict()) == normalize
    category = open_category(cfg.data)
    got, expected = (evaluate(d, category, progress=False) for d in (chose, by_hand))
    assert {m: got[m] for m in METRIC_NAMES} == pytest.approx({m: expected[m] for m in METRIC_NAMES})
    assert got["threshold"] == pytest.approx(expected["threshold"])


def test_choose_refuses_bad_values_and_prn(tiny_dataset):
    cfg = tiny_config("ae", tiny_dataset)
    apply_overrides(cfg, {"postprocess": {"choose": "auto"}})
    with pytest.raises(ConfigError, match="postprocess.choose must be manual or synthetic, got 'auto'"):
        build_model(cfg)
    cfg = tiny_config("prn", tiny_dataset)
    apply_overrides(cfg, {"postprocess": {"choose": "synthetic"}})
    with pytest.raises(ConfigError, match="postprocess.choose filters reconstruction errors"):
        build_model(cfg)
    cfg = tiny_config("pmb", tiny_dataset)
    apply_overrides(cfg, {"postprocess": {"choose": "synthetic"}, "data": {"val_fraction": 0.0}})
    with pytest.raises(ConfigError, match="needs validation images"):
        training.fit(cfg, tiny_dataset.parent / "run", progress=False)
    assert not (tiny_dataset.parent / "run").exists()  # refused before anything was written


def test_hee_zeroed_script_splits_the_zeroed_pixels_by_the_masks(tiny_dataset, tmp_path):
    # bench/hee_zeroed.py: the two shares, weighted by the mask and background pixel counts, give HEE's zeros overall.
    from defectmap.data.dataset import ImageDataset

    ckpt = training.fit(tiny_config("ae", tiny_dataset), tmp_path / "run", progress=False)
    script = Path(__file__).resolve().parents[1] / "bench" / "hee_zeroed.py"
    out = tmp_path / "zeroed.json"
    done = subprocess.run([sys.executable, str(script), str(ckpt), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    [row] = json.loads(out.read_text())["rows"]
    detector = load(ckpt, device="cpu")
    defective = [s for s in open_category(detector.config.data).test if s.label == 1]
    items = [ImageDataset(defective, detector.config.data.image_size)[i] for i in range(len(defective))]
    masks = torch.stack([item["mask"] for item in items]) > 0.5
    with torch.no_grad():
        errors = histogram_error_estimation(detector.model.difference(torch.stack([item["image"] for item in items])))
    zeros = row["defect_pixels_zeroed"] * masks.sum() + row["background_pixels_zeroed"] * (~masks).sum()
    assert (zeros / masks.numel()).item() == pytest.approx((errors == 0).float().mean().item(), abs=1e-6)
    assert 0 < row["defect_pixels_zeroed"] < 1 and 0 < row["background_pixels_zeroed"] < 1

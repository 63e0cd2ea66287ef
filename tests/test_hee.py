"""Histogram Error Estimation: property tests, and HEE inside a model (forward and ONNX export)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from defectmap.models.hee import histogram_error_estimation

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


@pytest.mark.parametrize("method", ["ae", "daad", "pmb"])
def test_hee_in_a_model_exports_with_parity(method, tmp_path):
    pytest.importorskip("onnxruntime")
    from defectmap.config import apply_overrides
    from defectmap.engine import Detector, build_model, load
    from defectmap.export import export
    from tests.conftest import tiny_config

    cfg = tiny_config(method)
    apply_overrides(cfg, {"postprocess": {"hee": True}})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    reference = model(images)
    assert (reference.anomaly_map >= 0).all()
    detector = Detector(model, cfg, {"threshold": 1.0}, torch.device("cpu"), {})
    exported = load(export(detector, tmp_path / "m.onnx"), device="cpu")
    got = exported.model(images)
    np.testing.assert_allclose(got.anomaly_map.numpy(), reference.anomaly_map.detach().numpy(), atol=1e-5)

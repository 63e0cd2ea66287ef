"""CUDA paths, run where a GPU is present (skipped elsewhere): every model trains on the GPU in float32 and
under fp16/bf16 autocast, and a GPU-trained checkpoint scores the same on the GPU, on the CPU and exported."""

import numpy as np
import pytest
import torch

from defectmap import engine, training
from defectmap.config import apply_overrides
from defectmap.data.mvtec import open_category
from defectmap.export import export
from defectmap.models import MODELS
from tests.conftest import assert_trained_alike, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def fit_on_cuda(root, out, method: str = "ae", **train):
    torch.manual_seed(0)
    cfg = tiny_config(method, root, epochs=2, device="cuda")
    apply_overrides(cfg, {"train": train})
    return training.fit(cfg, out, progress=False)


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_trains_on_cuda(tiny_dataset, tmp_path, amp):
    plain = torch.load(fit_on_cuda(tiny_dataset, tmp_path / "plain"), weights_only=True)["state_dict"]
    mixed = torch.load(fit_on_cuda(tiny_dataset, tmp_path / amp, amp=amp), weights_only=True)["state_dict"]
    weights = [k for k, v in plain.items() if v.is_floating_point()]
    assert all(torch.isfinite(mixed[k]).all() for k in weights)
    assert any(not torch.equal(plain[k], mixed[k]) for k in weights)  # autocast really ran in half precision


@pytest.mark.parametrize("method", list(MODELS))
def test_a_gpu_checkpoint_scores_alike_on_gpu_cpu_and_exported(method, tiny_dataset, tmp_path):
    checkpoint = fit_on_cuda(tiny_dataset, tmp_path / method, method)
    gpu, cpu = engine.load(checkpoint, device="cuda"), engine.load(checkpoint, device="cpu")
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).is_cuda
    exported = engine.load(export(cpu, tmp_path / f"{method}.onnx"), device="cpu")
    samples = open_category(gpu.config.data).test
    rows = [list(engine.predict(d, samples, progress=False)) for d in (gpu, cpu, exported)]
    for a, *others in zip(*rows, strict=True):
        for b in others:
            # cuDNN may use TF32 convolutions on the GPU: agreement to about 1e-3, not float32's 1e-6
            np.testing.assert_allclose(a["map"], b["map"], atol=2e-3 * max(1.0, float(np.abs(a["map"]).max())))
            assert abs(a["score"] - b["score"]) <= 2e-3 * max(1.0, abs(a["score"]))
    category = open_category(gpu.config.data)
    on_gpu, on_cpu = engine.evaluate(gpu, category, progress=False), engine.evaluate(cpu, category, progress=False)
    for key in ("image_auroc", "pixel_auroc", "aupro"):  # metrics run on the GPU for a GPU detector
        assert on_gpu[key] == pytest.approx(on_cpu[key], abs=0.02), key


def test_compiled_step_on_cuda_matches_eager(tiny_dataset, tmp_path):
    eager = torch.load(fit_on_cuda(tiny_dataset, tmp_path / "eager"), weights_only=True)["state_dict"]
    compiled = torch.load(fit_on_cuda(tiny_dataset, tmp_path / "compiled", compile=True), weights_only=True)
    assert_trained_alike(eager, compiled["state_dict"], close=1e-3, far=5e-3)  # same maths in fused Triton kernels


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="needs a machine with one GPU")
def test_more_gpu_processes_than_gpus_is_a_clear_error(tiny_dataset, tmp_path):
    import os
    import subprocess
    import sys

    checkpoint = fit_on_cuda(tiny_dataset, tmp_path / "run")
    command = [sys.executable, "-m", "defectmap", "predict", str(checkpoint), str(tiny_dataset / "tiny" / "test"),
               "--out", str(tmp_path / "maps"), "--quiet", "--device", "cuda", "--devices", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert "2 processes on this machine but 1 GPU(s)" in result.stderr

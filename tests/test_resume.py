"""Interrupted training: kill -9 and SIGTERM mid-run, resume, and end with the uninterrupted weights."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from defectmap import training
from defectmap.errors import DefectmapError
from tests.conftest import tiny_config

ARGS = [
    "--set", "data.image_size=48", "--set", "train.epochs=6", "--set", "train.batch_size=2",
    "--set", "train.patience=0", "--set", "train.checkpoint_every=1", "--set", "train.deterministic=true",
    "--set", "train.device=cpu", "--set", "model.channels=[16,32,64]", "--set", "data.val_fraction=0.25",
]  # fmt: skip


def train(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "defectmap", "train", "--model", "ae", "--data", str(data),
               "--category", "tiny", "--out", str(out), "--quiet", *ARGS, *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def resume(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "defectmap", "train", "--out", str(out), "--resume", "--quiet"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def wait_for_step(out: Path, process: subprocess.Popen, minimum: int) -> int:
    """Poll last.ckpt until it records at least `minimum` steps; returns the step seen."""
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        path = out / "last.ckpt"
        if path.exists():
            try:
                step = torch.load(path, weights_only=True)["state"]["global_step"]
            except Exception:  # replaced while reading: try again
                step = 0
            if step >= minimum:
                return step
        time.sleep(0.01)
    raise AssertionError(f"training ended or stalled before step {minimum}: {process.communicate()}")


def final_weights(out: Path) -> dict:
    return torch.load(out / "model.ckpt", weights_only=True)["state_dict"]


def uninterrupted(data: Path, out: Path, *extra: str) -> dict:
    process = train(data, out, *extra)
    assert process.wait(timeout=300) == 0, process.communicate()
    return final_weights(out)


# SIGTERM with weight averaging: the average is part of the saved state and resumes exactly too
@pytest.mark.parametrize("how,extra", [("SIGKILL", ()), ("SIGTERM", ("--set", "train.ema_decay=0.9"))])
def test_killed_run_resumes_to_the_same_weights(how, extra, tiny_dataset, tmp_path):
    reference = uninterrupted(tiny_dataset, tmp_path / "uninterrupted", *extra)
    out = tmp_path / "killed"
    process = train(tiny_dataset, out, *extra)
    step = wait_for_step(out, process, minimum=4)
    process.send_signal(getattr(signal, how))
    code = process.wait(timeout=60)
    stderr = process.communicate()[1]
    assert not (out / "model.ckpt").exists(), "the run finished before it was interrupted"
    if how == "SIGTERM":  # a clean stop: state saved at the step boundary, one line, exit 2
        lines = [line for line in stderr.splitlines() if not line.startswith("defectmap: warning:")]  # 2 val images
        assert code == 2 and len(lines) == 1 and "--resume" in lines[0]
    else:
        assert code == -signal.SIGKILL
    saved = torch.load(out / "last.ckpt", weights_only=True)["state"]["global_step"]
    assert step <= saved < 6 * 3  # 6 epochs x 3 steps of 2 images
    result = resume(out)
    assert result.returncode == 0, result.stderr
    resumed = final_weights(out)
    assert resumed.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(resumed[key], value), key
    # history.json's per-epoch loss means count the steps before the interruption too
    losses = [[epoch["losses"] for epoch in json.loads((run / "history.json").read_text())]
              for run in (tmp_path / "uninterrupted", out)]  # fmt: skip
    assert len(losses[0]) == 6 and all(epoch.keys() == {"loss", "mse"} and epoch["loss"] > 0 for epoch in losses[0])
    assert losses[1] == [{k: pytest.approx(v, rel=1e-5) for k, v in epoch.items()} for epoch in losses[0]]


def test_resume_without_state_is_a_clear_error(tmp_path):
    result = resume(tmp_path / "empty")
    assert result.returncode == 2 and "nothing to resume" in result.stderr


def test_nan_loss_stops_with_the_step(tiny_dataset, tmp_path, monkeypatch):
    from defectmap.models.ae import Autoencoder

    def nan_loss(self, batch):
        value = self.reconstruct(batch["image"]).mean() * float("nan")
        return {"loss": value}

    monkeypatch.setattr(Autoencoder, "loss", nan_loss)
    with pytest.raises(DefectmapError, match="became nan at step 1"):
        training.fit(tiny_config("ae", tiny_dataset), tmp_path / "run", progress=False)


def test_constant_validation_scores_warn(tiny_dataset, tmp_path, monkeypatch):
    from defectmap.models.ae import Autoencoder
    from defectmap.models.base import Output

    def constant(self, images):
        maps = self.reconstruct(images).mean(1) * 0
        return Output(maps.flatten(1).amax(1), maps)

    monkeypatch.setattr(Autoencoder, "forward", constant)
    with pytest.warns(UserWarning, match="same score"):
        training.fit(tiny_config("ae", tiny_dataset), tmp_path / "run", progress=False)

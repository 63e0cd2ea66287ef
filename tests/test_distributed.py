"""Two processes (gloo on CPU) against one: same weights after training, same scores.csv from predict."""

import os
import subprocess
import sys

import pytest
import torch

from defectmap.distributed import shard_batches
from tests.conftest import assert_trained_alike

TRAIN = ["--set", "data.image_size=32", "--set", "train.epochs=3", "--set", "train.batch_size=4",
         "--set", "train.patience=0", "--set", "train.deterministic=true", "--set", "train.device=cpu",
         "--set", "data.val_fraction=0.25", "--quiet"]  # fmt: skip
MODEL = {
    "ae": ["--set", "model.channels=[8,16]", "--set", "model.latent_channels=4",
           "--set", "train.ema_decay=0.5"],  # weight averaging: every rank averages the same all-reduced steps
    "daad": ["--set", "model.channels=[8,16,32]", "--set", "model.memory_levels=[0,1]",
             "--set", "model.block_sizes=[4,2]", "--set", "model.memory_items=[8,8]",
             "--set", "model.discriminator_channels=[8,16]"],
    "prn": ["--set", "model.backbone=resnet18", "--set", "model.pretrained=false", "--set", "model.width=8",
            "--set", "model.attention_layers=1", "--set", "model.decoder_channels=[8,8,8,8]",
            "--set", "model.max_prototypes=3"],
}  # fmt: skip


def run(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run([sys.executable, "-m", "defectmap", *args], env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_shard_batches_split_every_global_batch():
    order = list(range(10))
    assert shard_batches(order, 4, 0, 2) == [0, 1, 4, 5]
    assert shard_batches(order, 4, 1, 2) == [2, 3, 6, 7]


@pytest.mark.parametrize("method", ["ae", "daad", "prn"])
def test_two_processes_match_one(method, tiny_dataset, tmp_path):
    common = ["train", "--model", method, "--data", str(tiny_dataset), "--category", "tiny", *TRAIN, *MODEL[method]]
    run(*common, "--out", str(tmp_path / "one"))
    run(*common, "--out", str(tmp_path / "two"), "--devices", "2")
    one = torch.load(tmp_path / "one" / "model.ckpt", weights_only=True)
    two = torch.load(tmp_path / "two" / "model.ckpt", weights_only=True)
    assert len(one["history"]) == len(two["history"]) == 3
    assert all(epoch["averaged_weights"] == (method == "ae") for epoch in two["history"])
    assert_trained_alike(one["state_dict"], two["state_dict"], close=1e-4, far=2e-3)  # Adam's lr is 1e-3


def test_distributed_predict_writes_the_same_csv(tiny_dataset, tmp_path):
    run("train", "--model", "ae", "--data", str(tiny_dataset), "--category", "tiny", *TRAIN, *MODEL["ae"],
        "--out", str(tmp_path / "run"))  # fmt: skip
    ckpt, images = str(tmp_path / "run" / "model.ckpt"), str(tiny_dataset / "tiny")
    on_cpu = ["--quiet", "--device", "cpu"]  # gloo processes, also on a GPU machine
    said_one = run("predict", ckpt, images, "--out", str(tmp_path / "one"), *on_cpu)
    said_two = run("predict", ckpt, images, "--out", str(tmp_path / "two"), *on_cpu, "--devices", "2", "--overlay")
    # One summary with the totals over both processes, as a single process prints it.
    total = sum(1 for _ in (tmp_path / "one" / "scores.csv").open()) - 1
    assert said_one.splitlines()[-2] == f"scored {total} images: {tmp_path / 'one' / 'scores.csv'}"
    assert [line for line in said_two.splitlines() if line.startswith(("scored", "decisions"))] == [
        f"scored {total} images: {tmp_path / 'two' / 'scores.csv'}",
        said_one.splitlines()[-1],
    ]
    for name in ("scores.csv", "regions.csv"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    names = sorted(p.name for p in (tmp_path / "one" / "maps").iterdir())
    assert sorted(p.name for p in (tmp_path / "two" / "maps").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "two" / "overlays").iterdir()) == names  # --overlay goes to every process
    assert not (tmp_path / "two" / ".parts").exists()


@pytest.mark.parametrize("command", ["train", "predict"])
def test_more_gpu_processes_than_gpus_stops_before_launching(command, tiny_dataset, tmp_path, monkeypatch, capsys):
    from defectmap import distributed
    from defectmap.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(distributed.subprocess, "call", lambda *a: pytest.fail("torchrun was started"))
    out = tmp_path / "out"
    if command == "train":
        args = ["train", "--model", "ae", "--data", str(tiny_dataset), "--category", "tiny", "--out", str(out),
                "--set", "train.device=cuda"]  # fmt: skip
    else:
        args = ["predict", str(tmp_path / "model.ckpt"), str(tiny_dataset / "tiny" / "test"), "--out", str(out)]
    assert main([*args, "--devices", "2"]) == 2
    error = capsys.readouterr().err
    assert "2 processes on this machine but 1 GPU(s)" in error and error.count("\n") == 1
    assert not out.exists()


def test_merging_keeps_every_region_row_of_an_image_in_input_order(tmp_path):
    # Each process writes its own CSVs; rank 0 joins them in the input order, with all of an image's region rows.
    import csv

    from defectmap.data.mvtec import Sample
    from defectmap.outputs import LOGS, merge_parts

    found = [(Sample(tmp_path / f"{name}.png", 0), name) for name in ("a", "b", "c")]
    paths = [str(sample.path) for sample, _ in found]
    written = {  # rank 0 scored a and c (a with two regions), rank 1 scored b (no region)
        0: {"scores.csv": [[paths[0], "1"], [paths[2], "3"]], "errors.csv": [],
            "regions.csv": [[paths[0], "1", "a1"], [paths[0], "2", "a2"], [paths[2], "1", "c1"]]},
        1: {"scores.csv": [[paths[1], "2"]], "errors.csv": [], "regions.csv": []},
    }  # fmt: skip
    parts = [tmp_path / "out" / ".parts" / f"rank{rank}" for rank in written]
    for part, tables in zip(parts, written.values(), strict=True):
        part.mkdir(parents=True)
        for name, rows in tables.items():
            with (part / name).open("w", newline="") as handle:
                csv.writer(handle).writerows([LOGS[name], *rows])
    assert merge_parts(found, tmp_path / "out", parts) == (3, 0)
    merged = list(csv.reader((tmp_path / "out" / "regions.csv").open(newline="")))
    assert merged == [LOGS["regions.csv"], [paths[0], "1", "a1"], [paths[0], "2", "a2"], [paths[2], "1", "c1"]]
    assert [row[1] for row in csv.reader((tmp_path / "out" / "scores.csv").open(newline=""))][1:] == ["1", "2", "3"]
    assert not (tmp_path / "out" / ".parts").exists()

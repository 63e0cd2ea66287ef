"""Speed of every model: training images/s, inference latency at batch 1, throughput at batch 32, peak memory.

    python bench/speed.py [--size 256] [--channels-last] [--amp bf16] [--out bench/results/speed_cpu.json]

Each model runs in its own subprocess (so peak memory is its own) with default settings, random
inputs, on CUDA when present else the CPU. Rows without a suffix time NCHW weights (the layout before
`train.channels_last` became the default); `--channels-last` adds a "(channels-last)" row per model, the
default layout today, timed in the same run; `--amp bf16` (or fp16, CUDA only) adds a channels-last row
per model whose training step runs under autocast as `train.amp` does (inference stays float32, as in
`predict`). When anomalib is installed (optional, not a dependency), its DRAEM (`DraemModel`) is timed
the same way in the same run, and the table shows each model's inference speed relative to it. DRAEM's
training step here is its two subnetworks' forward and backward with an L2 + cross-entropy loss on
random masks (anomalib's augmentation is not timed).
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def build(name: str, compile_step: bool = False, amp: str = "off"):
    """(module, one training step(images)) for a defectmap model or anomalib's DRAEM; `amp` as train.amp."""
    if name == "draem":
        from anomalib.models.image.draem.torch_model import DraemModel

        model = DraemModel()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(images: torch.Tensor) -> None:
            model.train()
            reconstruction, prediction = model(images)
            masks = (torch.rand_like(images[:, 0]) > 0.9).long()
            loss = F.mse_loss(reconstruction, images) + F.cross_entropy(prediction, masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return model, step
    from defectmap.config import resolve_config
    from defectmap.engine import build_model
    from defectmap.training import _mixed_precision

    cfg = resolve_config({}, name)
    model = build_model(cfg)
    optimizers = {k: torch.optim.Adam(v, lr=1e-4) for k, v in model.optimizer_groups().items()}
    loss_fn = torch.compile(model.loss) if compile_step else model.loss
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    amp_dtype, scaler = _mixed_precision(amp, torch.device(device_type))

    def step(images: torch.Tensor) -> None:  # the engine's step, as in training.fit
        model.train()
        masks = (torch.rand_like(images[:, 0]) > 0.95).float()  # used by models that learn from anomalies (prn)
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            losses = loss_fn({"image": images, "mask": masks})
        for i, (key, optimizer) in enumerate(optimizers.items()):
            optimizer.zero_grad(set_to_none=True)
            loss = scaler.scale(losses[key]) if scaler else losses[key]
            loss.backward(retain_graph=i < len(optimizers) - 1)
            if scaler:
                scaler.step(optimizer)
            else:
                optimizer.step()
        if scaler:
            scaler.update()

    return model, step


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of `repeats` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(name: str, size: int, compile_step: bool = False, channels_last: bool = False, amp: str = "off") -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, step = build(name, compile_step and name != "draem", amp)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=layout)  # as engine.build_model does with train.channels_last
    cpu = device.type == "cpu"
    train_batch = 8 if cpu else 32
    train_images = torch.rand(train_batch, 3, size, size, device=device).contiguous(memory_format=layout)
    train_s = timed(lambda: step(train_images), 3 if cpu else 10, device)
    model.eval()
    one = torch.rand(1, 3, size, size, device=device).contiguous(memory_format=layout)
    many = torch.rand(32, 3, size, size, device=device).contiguous(memory_format=layout)
    with torch.no_grad():
        latency = timed(lambda: model(one), 10 if cpu else 50, device)
        batch_s = timed(lambda: model(many), 2 if cpu else 20, device)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if not cpu
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    suffix = (" (compiled)" if compile_step and name != "draem" else "") + (" (channels-last)" if channels_last else "")
    suffix += f" ({amp} training)" if amp != "off" else ""
    return {
        "model": name + suffix,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "train_images_per_s": train_batch / train_s,
        "latency_ms_batch1": latency * 1000,
        "images_per_s_batch32": 32 / batch_s,
        "peak_memory_mb": peak,
        "memory_kind": "CUDA max allocated" if not cpu else "process peak RSS",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", default="bench/results/speed.json")
    parser.add_argument("--compile", action="store_true", help="torch.compile our training steps (train.compile)")
    parser.add_argument("--channels-last", action="store_true",
                        help="also time each of our models with train.channels_last, in the same run")  # fmt: skip
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                        help="also time each of our models' training step under train.amp (channels-last)")  # fmt: skip
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model in this process
    args = parser.parse_args()
    if args.one:  # with --channels-last: that layout only; with --amp: that precision only
        print(json.dumps(measure(args.one, args.size, args.compile, args.channels_last, args.amp)))
        return
    from defectmap.models import MODELS

    names = list(MODELS)
    try:
        import anomalib  # noqa: F401

        names.append("draem")
    except ImportError:
        print("anomalib is not installed: no DRAEM reference in this run (pip install anomalib)")
    runs = []  # (model, extra arguments of its subprocess)
    for name in names:
        runs.append((name, []))
        if args.channels_last and name != "draem":
            runs.append((name, ["--channels-last"]))
        if args.amp != "off" and name != "draem":
            runs.append((name, ["--channels-last", "--amp", args.amp]))
    rows = []
    for name, extra in runs:
        command = [sys.executable, __file__, "--one", name, "--size", str(args.size), *extra]
        result = subprocess.run(command + (["--compile"] if args.compile else []), capture_output=True, text=True)
        if result.returncode:
            print(f"{name}: failed: {result.stderr.strip().splitlines()[-1]}")
            continue
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    reference = next((r for r in rows if r["model"] == "draem"), None)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.size}x{args.size} inputs on {device}")
    print("| model | params (M) | train img/s | latency b=1 (ms) | img/s b=32 | peak MB | b=32 speed vs DRAEM |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['images_per_s_batch32'] / reference['images_per_s_batch32']:.1f}x" if reference else "n/a"
        print(f"| {r['model']} | {r['parameters_m']:.1f} | {r['train_images_per_s']:.1f} | {r['latency_ms_batch1']:.1f}"
              f" | {r['images_per_s_batch32']:.1f} | {r['peak_memory_mb']:.0f} | {ratio} |")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    summary = {"size": args.size, "device": device, "machine": platform.machine(), "torch": torch.__version__,
               "amp": args.amp}  # fmt: skip
    Path(args.out).write_text(json.dumps({**summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

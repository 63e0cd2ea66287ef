"""Inference speed of the same weights as a checkpoint (PyTorch eager), ONNX (onnxruntime) and TorchScript.

    python bench/export_speed.py [--size 256] [--out bench/results/export_speed_cpu.json]

For each model (default settings, random-init weights apart from PRN's ImageNet backbone, channels-last
as `train.channels_last` sets it) in its own subprocess: export with `defectmap.export.export`, load the
file with the runner that `defectmap.load` uses, and time batch-1 latency and batch-32 throughput of the
model call (not decoding or map resizing, which are the same for all three) on the same random inputs,
all three in the same process. Also records the largest difference of the exported maps from eager's.
Timings are medians after a warm-up. Everything runs on the CPU, also on a GPU machine: defectmap runs
ONNX on onnxruntime's CPU provider, and this compares the formats a CPU line would choose between.
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from speed import timed  # bench/ is the script's folder, so on sys.path


def measure(name: str, size: int, repeats: int) -> list[dict]:
    from defectmap.config import resolve_config
    from defectmap.engine import Detector, build_model, load
    from defectmap.export import export

    torch.manual_seed(0)
    device = torch.device("cpu")
    cfg = resolve_config({"data": {"image_size": size}}, name)
    model = build_model(cfg).eval()
    detector = Detector(model, cfg, {}, device, {})
    one = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    many = torch.rand(32, 3, size, size, generator=torch.Generator().manual_seed(2))
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    runners = {"checkpoint (eager)": lambda x: model(x.contiguous(memory_format=layout))}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts")):
            runners[fmt] = load(export(detector, Path(tmp) / f"{name}{suffix}", fmt), device="cpu").model
        rows = []
        with torch.no_grad():
            reference = model(many).anomaly_map
            for label, run in runners.items():
                latency = timed(lambda run=run: run(one), repeats, device)
                batch_s = timed(lambda run=run: run(many), max(2, repeats // 5), device)
                difference = (run(many).anomaly_map - reference).abs().max().item()
                rows.append({"model": name, "format": label, "latency_ms_batch1": latency * 1000,
                             "images_per_s_batch32": 32 / batch_s, "max_map_difference": difference})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20, help="timed batch-1 calls (batch 32: a fifth of it)")
    parser.add_argument("--out", default="bench/results/export_speed.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.repeats)))
        return
    from defectmap.models import MODELS

    rows = []
    for name in MODELS:
        command = [sys.executable, __file__, "--one", name, "--size", str(args.size), "--repeats", str(args.repeats)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            print(f"{name}: failed: {result.stderr.strip().splitlines()[-1]}")
            continue
        rows.extend(json.loads(result.stdout.strip().splitlines()[-1]))
    device = f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.size}x{args.size} inputs on {device}")
    print("| model | format | latency b=1 (ms) | img/s b=32 | vs eager b=32 | max map difference |")
    print("|---|---|---|---|---|---|")
    eager = {r["model"]: r for r in rows if r["format"] == "checkpoint (eager)"}
    for r in rows:
        ratio = r["images_per_s_batch32"] / eager[r["model"]]["images_per_s_batch32"]
        print(f"| {r['model']} | {r['format']} | {r['latency_ms_batch1']:.1f} | {r['images_per_s_batch32']:.1f}"
              f" | {ratio:.2f}x | {r['max_map_difference']:.1e} |")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    summary = {"size": args.size, "device": device, "machine": platform.machine(), "torch": torch.__version__}
    try:
        import onnxruntime

        summary["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    Path(args.out).write_text(json.dumps({**summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

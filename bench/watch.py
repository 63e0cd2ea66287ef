"""How soon does `defectmap watch` give a verdict on an image saved into its folder? Latency and throughput.

    python bench/watch.py RUN/model.ckpt IMAGES_DIR [-n 60] [--rate 2] [--settle 0.5 --interval 0.5] \
        [--out bench/results/watch.json]

Starts `defectmap watch` on an empty temporary folder and, once it says it is watching, saves `-n` images from
IMAGES_DIR into it the way a camera program should (written under a hidden name, then renamed), first one every
1/`--rate` seconds (a paced line), then all at once (a burst). Each image's latency runs from its rename to the
moment the watcher prints its line (the line follows the image's rows in scores.csv and regions.csv and its PNGs).
Prints median, 95th percentile and largest latency of the paced phase and the burst's images per second, and
writes them to `--out`. Start-up (loading the model) is not counted.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from defectmap.data.images import is_image_file


def _save(source: Path, folder: Path, name: str) -> float:
    """Write `source` into `folder` as a camera program should (hidden temporary name, then rename)."""
    shutil.copyfile(source, folder / f".{name}")
    os.replace(folder / f".{name}", folder / name)
    return time.monotonic()


def _wait_for(printed: dict, count: int, process: subprocess.Popen) -> None:
    while len(printed) < count:
        if process.poll() is not None:
            sys.exit(f"defectmap watch stopped with exit code {process.returncode}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("images", help="a folder of images to save into the watched folder (searched recursively)")
    parser.add_argument("-n", type=int, default=60, help="images per phase")
    parser.add_argument("--rate", type=float, default=2.0, help="images per second in the paced phase")
    parser.add_argument("--settle", type=float, default=0.5)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--out", default="bench/results/watch.json")
    args = parser.parse_args()
    sources = sorted(p for p in Path(args.images).rglob("*") if is_image_file(p))
    if len(sources) < args.n:
        parser.error(f"{args.images} holds {len(sources)} images, fewer than -n {args.n}")
    work = Path(tempfile.mkdtemp(prefix="watch_bench_"))
    folder = work / "line"
    folder.mkdir()
    command = [sys.executable, "-m", "defectmap", "watch", args.checkpoint, str(folder), "--out", str(work / "out"),
               "--settle", str(args.settle), "--interval", str(args.interval)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1)
    if not process.stdout.readline().startswith("watching"):
        sys.exit(f"defectmap watch did not start: {process.wait()}")
    printed: dict[str, float] = {}  # image name -> when its line appeared

    def read() -> None:
        for line in process.stdout:
            printed[Path(line.split()[-1]).name] = time.monotonic()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    saved: dict[str, float] = {}
    for i, source in enumerate(sources[: args.n]):  # paced
        name = f"paced_{i:04d}{source.suffix}"
        saved[name] = _save(source, folder, name)
        time.sleep(max(0.0, saved[name] + 1 / args.rate - time.monotonic()))
    _wait_for(printed, args.n, process)
    burst_start = time.monotonic()
    for i, source in enumerate(sources[: args.n]):
        name = f"burst_{i:04d}{source.suffix}"
        saved[name] = _save(source, folder, name)
    _wait_for(printed, 2 * args.n, process)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    shutil.rmtree(work)
    paced = np.array([printed[n] - saved[n] for n in saved if n.startswith("paced")])
    burst_seconds = max(printed[n] for n in saved if n.startswith("burst")) - burst_start
    result = {
        "call": " ".join(
            [
                "python bench/watch.py",
                args.checkpoint,
                args.images,
                f"-n {args.n}",
                f"--rate {args.rate}",
                f"--settle {args.settle}",
                f"--interval {args.interval}",
            ]
        ),  # fmt: skip
        "images_per_phase": args.n,
        "paced_latency_s": {
            "median": float(np.median(paced)),
            "p95": float(np.percentile(paced, 95)),
            "max": float(paced.max()),
        },
        "burst_seconds": burst_seconds,
        "burst_images_per_s": args.n / burst_seconds,
    }
    lat, rate = result["paced_latency_s"], result["burst_images_per_s"]
    print(f"paced at {args.rate}/s: latency median {lat['median']:.2f} s, p95 {lat['p95']:.2f} s, "
          f"max {lat['max']:.2f} s; burst of {args.n}: {burst_seconds:.1f} s, {rate:.1f} images/s")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Bounded load run against `defectmap serve` on loopback: throughput, p50/p99 latency, error count.

    python bench/serve.py CHECKPOINT [--images DIR] [--requests 500 --clients 8] [--out bench/results/serve.json]

Starts the service as a subprocess on a free port, then sends `--requests` POST /predict requests
(image bytes cycled from --images, or the built-in demo fabric) from `--clients` concurrent clients.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from defectmap.data.demo import add_defect, fabric
from defectmap.data.images import is_image_file


def payloads(folder: str | None) -> list[bytes]:
    if folder:
        return [p.read_bytes() for p in sorted(Path(folder).rglob("*")) if is_image_file(p)][:64]
    rng = np.random.default_rng(0)
    images = [fabric(rng, 160) for _ in range(8)] + [add_defect(fabric(rng, 160), "hole", rng)[0] for _ in range(8)]
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--images")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", default="bench/results/serve.json")
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "defectmap", "serve", args.checkpoint, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit(f"service did not start: {server.stderr.read().decode()[-2000:]}")
        bodies = payloads(args.images)

        def client(index: int) -> tuple[float, int]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            start = time.perf_counter()
            try:
                body = bodies[index % len(bodies)]
                connection.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
                response = connection.getresponse()
                response.read()
                return time.perf_counter() - start, response.status
            except OSError:
                return time.perf_counter() - start, 0
            finally:
                connection.close()

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(client, range(args.requests)))
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    latencies = np.array([r[0] for r in results]) * 1000
    errors = sum(1 for _, status in results if status != 200)
    summary = {
        "requests": args.requests,
        "clients": args.clients,
        "throughput_rps": args.requests / wall,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "errors": errors,
        "checkpoint": args.checkpoint,
    }
    print(
        f"{args.requests} requests, {args.clients} clients: {summary['throughput_rps']:.1f} req/s, "
        f"p50 {summary['p50_ms']:.1f} ms, p99 {summary['p99_ms']:.1f} ms, errors {errors}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

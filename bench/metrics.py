"""Time our exact pixel metrics against scikit-learn on synthetic masks and tied maps.

    python bench/metrics.py [--out bench/results/metrics.json] [--skip-check]

For each case (150 images at 256^2, 100 at 1024^2) prints the seconds of our AU-PRO, our pixel
AUROC and scikit-learn's roc_auc_score, and checks both values against references to 1e-6
(AU-PRO against an independent per-threshold implementation on a subsample-free run).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from defectmap import metrics


def synthetic(n_images: int, size: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Masks with a few blobs on two thirds of the images; maps quantised to 256 levels (many ties)."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n_images):
        mask = np.zeros((size, size), dtype=np.uint8)
        if i % 3:
            for _ in range(rng.integers(1, 4)):
                r = rng.integers(size // 64, size // 8)
                cy, cx = rng.integers(r, size - r, size=2)
                yy, xx = np.ogrid[:size, :size]
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        noise = rng.random((size, size), dtype=np.float32)
        amap = ndimage.uniform_filter(noise + 0.25 * mask, size=5)
        maps.append(np.round(amap * 255) / 255)
        masks.append(mask)
    return masks, maps


def reference_aupro(masks: list[np.ndarray], maps: list[np.ndarray], limit: float = 0.3) -> float:
    """Independent AU-PRO: per-region score histograms over the sorted distinct thresholds (numpy only)."""
    scores = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    thresholds = np.unique(scores)[::-1]
    ok = np.concatenate([(m == 0).ravel() for m in masks])
    fp = np.searchsorted(-np.sort(scores[ok])[::-1], -thresholds, side="right") / ok.sum()
    pros = np.zeros_like(thresholds)
    n_regions = 0
    for mask, amap in zip(masks, maps, strict=True):
        labelled, count = ndimage.label(mask > 0, structure=np.ones((3, 3)))
        for r in range(1, count + 1):
            region_scores = np.sort(amap[labelled == r].astype(np.float64))
            above = len(region_scores) - np.searchsorted(region_scores, thresholds, side="left")
            pros += above / len(region_scores)
            n_regions += 1
    fpr, pro = np.concatenate([[0], fp]), np.concatenate([[0], pros / n_regions])
    return metrics.area_to_limit(fpr, pro, limit) / limit


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/metrics.json")
    parser.add_argument("--skip-check", action="store_true", help="skip the slow reference AU-PRO")
    args = parser.parse_args()
    rows = []
    for n_images, size in [(150, 256), (100, 1024)]:
        masks, maps = synthetic(n_images, size)
        labels = np.concatenate([m.ravel() for m in masks])
        scores = np.concatenate([m.ravel() for m in maps])
        aupro, t_aupro = timed(metrics.aupro, masks, maps)
        auroc, t_auroc = timed(metrics.pixel_auroc, masks, maps)
        sk_auroc, t_sklearn = timed(roc_auc_score, labels, scores)
        row = {
            "images": n_images,
            "size": size,
            "aupro": aupro,
            "aupro_s": t_aupro,
            "pixel_auroc": auroc,
            "pixel_auroc_s": t_auroc,
            "sklearn_auroc": sk_auroc,
            "sklearn_auroc_s": t_sklearn,
            "auroc_abs_diff": abs(auroc - sk_auroc),
        }
        if not args.skip_check:
            ref, t_ref = timed(reference_aupro, masks, maps)
            row.update(reference_aupro=ref, reference_aupro_s=t_ref, aupro_abs_diff=abs(aupro - ref))
        rows.append(row)
        print(
            f"{n_images} x {size}^2: AU-PRO {aupro:.6f} in {t_aupro:.2f}s | pixel AUROC {auroc:.6f} in {t_auroc:.2f}s"
            f" | sklearn roc_auc_score {sk_auroc:.6f} in {t_sklearn:.2f}s"
            + (
                f" | reference AU-PRO {row['reference_aupro']:.6f} in {row['reference_aupro_s']:.1f}s"
                if "reference_aupro" in row
                else ""
            )
        )
        assert row["auroc_abs_diff"] < 1e-6, row
        assert row.get("aupro_abs_diff", 0.0) < 1e-6, row
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()} threads"
    result = {"device": device, "machine": platform.machine(), "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

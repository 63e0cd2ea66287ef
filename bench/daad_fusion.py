"""DAAD+'s image score: the fixed latent share against the one chosen on synthetic validation anomalies.

    python bench/daad_fusion.py RUN/model.ckpt [RUN2/model.ckpt ...] [--out bench/results/daad_fusion.json]

The same weights are scored three ways on the test split: the map maximum alone, the latent distance
alone, and the fusion. The fusion's latent share is chosen as `train` now does it (model.fusion=synthetic:
the best image AUROC on the validation normals with synthetic anomalies pasted in, no real anomaly) and
compared with the share the checkpoint was trained with. Pixel maps do not depend on the fusion.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from defectmap import engine, metrics
from defectmap.data.dataset import ImageDataset, collate
from defectmap.data.mvtec import open_category
from defectmap.training import probe_batches


@torch.no_grad()
def raw_scores(model, dataset: ImageDataset, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), [map maximum, latent distance] (N, 2)) over a dataset."""
    labels, raws = [], []
    for batch, _ in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        raws.append(model._raw_scores(batch["image"].to(device))[1].cpu())
        labels += batch["label"].tolist()
    return np.array(labels), torch.cat(raws).numpy()


def load_daad_plus(checkpoint: str):
    """(detector, model, config) of a DAAD+ checkpoint on the CPU; exits with a message for any other model."""
    detector = engine.load(checkpoint, device="cpu")
    if getattr(detector.model, "discriminator", None) is None:
        raise SystemExit(f"{checkpoint}: not a DAAD+ checkpoint (no discriminator)")
    return detector, detector.model, detector.config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--out", default="bench/results/daad_fusion.json")
    args = parser.parse_args()
    rows = []
    for checkpoint in args.checkpoints:
        detector, model, cfg = load_daad_plus(checkpoint)
        trained_weight = cfg.model.latent_weight
        category = open_category(cfg.data)
        val_set = ImageDataset(category.val, cfg.data.image_size, cache=True)
        cfg.model.fusion = "synthetic"
        normals = (b["image"] for b in DataLoader(val_set, batch_size=cfg.train.eval_batch_size))
        model.calibrate(normals, probe_batches(cfg, val_set, detector.device))
        labels, raw = raw_scores(model, ImageDataset(category.test, cfg.data.image_size), 32, detector.device)
        z = (raw - model.score_mean.cpu().numpy()) / model.score_std.cpu().numpy()
        shares = (0.0, 1.0, trained_weight, cfg.model.latent_weight)
        aurocs = {w: metrics.image_auroc(labels, (1 - w) * z[:, 0] + w * z[:, 1]) for w in shares}
        row = {"checkpoint": checkpoint, "trained_latent_weight": trained_weight,
               "chosen_latent_weight": cfg.model.latent_weight, "image_auroc_map_max": aurocs[0.0],
               "image_auroc_latent": aurocs[1.0], "image_auroc_trained_fusion": aurocs[trained_weight],
               "image_auroc_chosen_fusion": aurocs[cfg.model.latent_weight]}  # fmt: skip
        rows.append(row)
        print(f"{checkpoint}: latent share {trained_weight} -> {row['chosen_latent_weight']}; image AUROC map max "
              f"{row['image_auroc_map_max']:.4f}, latent {row['image_auroc_latent']:.4f}, fusion "
              f"{row['image_auroc_trained_fusion']:.4f} -> {row['image_auroc_chosen_fusion']:.4f}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

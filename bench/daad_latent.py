"""Where DAAD+'s discriminator carries anomaly evidence: image AUROC of latent distances at every layer.

    python bench/daad_latent.py RUN/model.ckpt [RUN2/model.ckpt ...] [--out bench/results/daad_latent.json]

DAAD+ scores an image by the distance between the discriminator's latent features of the image and of its
reconstruction (`Discriminator` averages the last layer over positions). Small defects may vanish in that
average, so every layer is also scored per position: the squared feature difference averaged over channels,
then reduced over positions by mean and by max. Each score is rated by image AUROC on the test split and on
the synthetic validation probe (the anomaly-free set DAAD+ chooses its fusion on), next to the map maximum.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from daad_fusion import load_daad_plus  # bench/ is the script's folder, so on sys.path
from torch import nn
from torch.utils.data import DataLoader

from defectmap import metrics
from defectmap.data.dataset import ImageDataset, collate
from defectmap.data.mvtec import open_category
from defectmap.training import probe_batches


def layer_features(discriminator: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The discriminator's feature map after every activation, shallowest first."""
    features, x = [], images
    for module in discriminator.features:
        x = module(x)
        if isinstance(module, nn.LeakyReLU):
            features.append(x)
    return features


@torch.no_grad()
def scores(model, batches) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(labels (N,), {score name: (N,)}) over (images, labels) batches."""
    labels, columns = [], {}
    for images, batch_labels in batches:
        recon, _ = model.reconstruct(images)
        maps = model.error_filter(model.error(images, recon))  # the map DAAD+ scores
        found = {"map max": maps.flatten(1).amax(1)}
        discriminator = model.discriminator
        pairs = zip(layer_features(discriminator, images), layer_features(discriminator, recon), strict=True)
        for level, (real, fake) in enumerate(pairs):
            per_position = (real - fake).pow(2).mean(1).flatten(1)  # (B, h * w)
            found[f"layer {level} pooled"] = (real.mean((2, 3)) - fake.mean((2, 3))).pow(2).mean(1)
            found[f"layer {level} position mean"] = per_position.mean(1)
            found[f"layer {level} position max"] = per_position.amax(1)
        for name, values in found.items():
            columns.setdefault(name, []).append(values.cpu())
        labels.append(batch_labels.cpu())
    return torch.cat(labels).numpy(), {name: torch.cat(values).numpy() for name, values in columns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--out", default="bench/results/daad_latent.json")
    args = parser.parse_args()
    rows = []
    for checkpoint in args.checkpoints:
        _, model, cfg = load_daad_plus(checkpoint)
        category = open_category(cfg.data)
        test = ImageDataset(category.test, cfg.data.image_size)
        test_batches = ((b["image"], b["label"]) for b, _ in DataLoader(test, batch_size=32, collate_fn=collate))
        val_set = ImageDataset(category.val, cfg.data.image_size, cache=True)
        row = {"checkpoint": checkpoint, "test": {}, "synthetic_probe": {}}
        for split, batches in (("test", test_batches), ("synthetic_probe", probe_batches(cfg, val_set, "cpu"))):
            labels, columns = scores(model, batches)
            row[split] = {name: metrics.image_auroc(labels, values) for name, values in columns.items()}
        rows.append(row)
        print(checkpoint)
        for name in row["test"]:
            print(f"  {name:22s} test {row['test'][name]:.3f}   synthetic probe {row['synthetic_probe'][name]:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

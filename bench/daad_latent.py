"""Where DAAD+'s discriminator carries anomaly evidence: image AUROC of latent distances at every layer.

    python bench/daad_latent.py RUN/model.ckpt [RUN2/model.ckpt ...] [--retrain-discriminator STEPS]
        [--out bench/results/daad_latent.json]

DAAD+ scores an image by the distance between the discriminator's latent features of the image and of its
reconstruction (`Discriminator` averages the last layer over positions). Small defects may vanish in that
average, so every layer is also scored per position: the squared feature difference averaged over channels,
then reduced over positions by mean and by max. Each score is rated by image AUROC on the test split and on
the synthetic validation probe (the anomaly-free set DAAD+ chooses its fusion on), next to the map maximum.

With `--retrain-discriminator STEPS` the checkpoint's discriminator is replaced by a fresh one (same architecture,
seed 0) trained for STEPS Adam steps (batch 16, the checkpoint's discriminator learning rate and model.gan_loss) to
tell the training normals from the checkpoint's fixed reconstructions of them, then scored the same way: is a
discriminator that has learned the task (its mean loss over the last 50 steps is reported) any better than the one
adversarial training left?
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
from defectmap.models.daad import Discriminator
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


def retrain_discriminator(model, normals: torch.Tensor, steps: int, lr: float) -> float:
    """Replace model.discriminator by a fresh one trained on normals vs their reconstructions; its mean loss over
    the last 50 steps (chance: 2 ln 2 = 1.386 with the BCE loss, 2 with the hinge loss)."""
    torch.manual_seed(0)
    with torch.no_grad():
        recon = torch.cat([model.reconstruct(chunk)[0] for chunk in normals.split(32)])
    discriminator = Discriminator(model.cfg.discriminator_channels)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr)
    generator, losses = torch.Generator().manual_seed(0), []
    for _ in range(steps):
        pick = torch.randint(len(normals), (min(16, len(normals)),), generator=generator)
        real, fake = discriminator(normals[pick])[0], discriminator(recon[pick])[0]
        loss = model.discriminator_objective(real, fake)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.discriminator = discriminator.eval()
    return float(np.mean(losses[-50:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--retrain-discriminator", type=int, default=0, metavar="STEPS")
    parser.add_argument("--out", default="bench/results/daad_latent.json")
    args = parser.parse_args()
    rows = []
    for checkpoint in args.checkpoints:
        _, model, cfg = load_daad_plus(checkpoint)
        category = open_category(cfg.data)
        row = {"checkpoint": checkpoint, "test": {}, "synthetic_probe": {}}
        if args.retrain_discriminator:
            lr = cfg.train.lr * model.lr_scales()["discriminator_loss"]
            normals = torch.stack([item["image"] for item in ImageDataset(category.train, cfg.data.image_size)])
            row["retrained_discriminator"] = {
                "steps": args.retrain_discriminator,
                "final_loss_last50": retrain_discriminator(model, normals, args.retrain_discriminator, lr),
            }
            print(f"{checkpoint}: fresh discriminator, loss {row['retrained_discriminator']['final_loss_last50']:.3f}")
        test = ImageDataset(category.test, cfg.data.image_size)
        test_batches = ((b["image"], b["label"]) for b, _ in DataLoader(test, batch_size=32, collate_fn=collate))
        val_set = ImageDataset(category.val, cfg.data.image_size, cache=True)
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

"""An untrained floor for the reconstruction models: each pixel's squared z-score against the normal images.

    python bench/mean_image.py --data ../shared/data --category magnetic_tile --image-size 128 \
        [--out bench/results/mean_image.json]

The per-position mean and standard deviation of the training normals (`train/good` minus the validation split,
as `train` holds it out) stand in for a reconstruction: the map is the squared z-score averaged over channels,
then the reconstruction models' error-map filter (Gaussian sigma 4, with and without HEE). The threshold is set
on the validation normals and the metrics come from `engine.evaluate`, as for any checkpoint. Nothing is learned
beyond two statistics per pixel, so a model that does not beat this has learned nothing about the parts.
"""

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from defectmap import engine
from defectmap.calibration import calibrate_on_validation
from defectmap.config import build_config
from defectmap.data.dataset import ImageDataset
from defectmap.data.mvtec import open_category
from defectmap.models.base import Output
from defectmap.models.hee import ErrorMapFilter, PostprocessConfig
from defectmap.outputs import METRIC_NAMES


class MeanImage(nn.Module):
    """Squared z-score of every pixel against fixed per-position statistics, filtered as the AE's map is."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, hee: bool, sigma: float):
        super().__init__()
        self.mean, self.std = mean, std
        self.error_filter = ErrorMapFilter(PostprocessConfig(hee=hee), sigma)

    def forward(self, images: torch.Tensor) -> Output:
        maps = self.error_filter(((images - self.mean) / self.std).pow(2).mean(1))
        return Output(maps.flatten(1).amax(1), maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--out", default="bench/results/mean_image.json")
    args = parser.parse_args()
    cfg = build_config("ae", None, [f"data.image_size={args.image_size}"], root=args.data, category=args.category)
    category, size, device = open_category(cfg.data), cfg.data.image_size, torch.device("cpu")
    normals = torch.cat([b["image"] for b in DataLoader(ImageDataset(category.train, size), batch_size=64)])
    mean, std = normals.mean(0), normals.std(0).clamp_min(1e-3)
    val_set = ImageDataset(category.val, size, cache=True)
    rows = []
    for hee in (False, True):
        model = MeanImage(mean, std, hee, cfg.model.smoothing_sigma).eval()
        calibration = calibrate_on_validation(model, val_set, 16, device, cfg.train.false_reject_rate)
        report = engine.evaluate(engine.Detector(model, cfg, calibration, device, {}), category, progress=False)
        rows.append({"variant": "mean image + HEE" if hee else "mean image", **{m: report[m] for m in METRIC_NAMES}})
        print(f"{rows[-1]['variant']}: " + "  ".join(f"{m} {rows[-1][m]:.4f}" for m in METRIC_NAMES))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"command_args": vars(args), "train_images": len(normals), "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()

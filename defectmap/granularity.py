"""DAAD's automatic granularity: choose the block size without any real anomaly.

For each candidate block scale s (memory level l gets blocks of max(1, s // 2**l), so every level's
blocks cover about the same image area, as in the granularity study), a short run is trained on the
normal images; each is scored on the validation normals with synthetic anomalies pasted in
(data/synthetic.py: Perlin + texture, CutPaste, scar; fixed per seed). The scale with the highest
mean of image and pixel AUROC there wins, and the full run trains with it. Nothing from the test
split is read. With DAAD+, each trial's image score uses the latent share its own calibration chose on
the same probe, so every scale is scored alike.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from defectmap import metrics
from defectmap.checkpoint import atomic_write
from defectmap.config import Config
from defectmap.data.dataset import synthetic_probe
from defectmap.data.mvtec import CategoryData
from defectmap.data.tiles import dataset_as_trained
from defectmap.errors import ConfigError
from defectmap.models.daad import block_sizes
from defectmap.progress import bars_off


@torch.no_grad()
def synthetic_validation_scores(model, dataset: ConcatDataset, batch_size: int, device) -> dict[str, float]:
    """Image AUROC (of the model's score and of each map's maximum) and pixel AUROC of `model` on validation normals
    with synthetic anomalies (model resolution)."""
    model.eval()
    labels, scores, peaks, masks, maps = [], [], [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        out = model(batch["image"].to(device))
        labels += batch["label"].tolist()
        scores += out.score.float().cpu().tolist()
        peaks += out.anomaly_map.flatten(1).amax(1).float().cpu().tolist()
        masks += [m.numpy() > 0.5 for m in batch["mask"]]
        maps += [m.float().cpu().numpy() for m in out.anomaly_map]
    return {"image_auroc": metrics.image_auroc(np.array(labels), np.array(scores)),
            "map_max_auroc": metrics.image_auroc(np.array(labels), np.array(peaks)),
            "pixel_auroc": metrics.pixel_auroc(masks, maps)}  # fmt: skip


def choose_granularity(cfg: Config, category: CategoryData, out_dir: Path, progress: bool) -> Config:
    """Train one short run per `model.auto_scales`, return `cfg` with the best block sizes.

    The returned config records the choice as `model.granularity = "auto:<scale>"`; the trials and
    their scores are written to OUT/granularity.json.
    """
    from defectmap.engine import load
    from defectmap.training import fit  # fit calls this module: import at call time

    data = cfg.data
    if not category.val:
        raise ConfigError("model.granularity=auto needs validation images: set data.val_fraction above 0")
    normals = dataset_as_trained(category.val, data, cache=True)
    probe = synthetic_probe(normals, data.texture_dir, cfg.train.seed)
    trials = []
    for scale in tqdm(cfg.model.auto_scales, desc="granularity trials", disable=bars_off(progress), leave=False):
        trial = copy.deepcopy(cfg)
        trial.model.granularity = "manual"
        trial.model.block_sizes = block_sizes(scale, cfg.model.memory_levels)
        trial.train.epochs = cfg.model.auto_epochs
        # Short by design: auto_epochs epochs take at least as many steps, so this raises no trial and marks its
        # steps as chosen (no short-run warning)
        trial.train.min_steps = cfg.model.auto_epochs
        checkpoint = fit(trial, out_dir / "granularity" / f"scale{scale}", progress=False)
        detector = load(checkpoint, device="cpu")
        scores = synthetic_validation_scores(detector.model, probe, cfg.train.eval_batch_size, detector.device)
        trials.append({"scale": scale, "block_sizes": list(trial.model.block_sizes), **scores})
        if progress:
            tqdm.write(f"granularity scale {scale}: synthetic image AUROC {scores['image_auroc']:.3f}, "
                       f"pixel AUROC {scores['pixel_auroc']:.3f}")  # fmt: skip
    best = max(trials, key=lambda t: (t["image_auroc"] + t["pixel_auroc"]) / 2)
    chosen = copy.deepcopy(cfg)
    chosen.model.granularity = f"auto:{best['scale']}"
    chosen.model.block_sizes = tuple(best["block_sizes"])
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "granularity.json",
                 lambda tmp: tmp.write_text(json.dumps({"chosen": best, "trials": trials}, indent=2)))  # fmt: skip
    return chosen

"""fit / evaluate / predict as plain loops over the model contract (`loss(batch)`, `forward(images)`)."""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from defectmap import metrics
from defectmap.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from defectmap.config import Config, config_to_dict, resolve_config
from defectmap.data.dataset import ImageDataset
from defectmap.data.images import load_mask
from defectmap.data.mvtec import CategoryData, Sample, open_category
from defectmap.data.transforms import resize_map
from defectmap.errors import DataError, DefectmapError
from defectmap.models import MODELS, AnomalyModel
from defectmap.threshold import calibrate, normalise


@dataclass
class Detector:
    """A trained model with its resolved config and calibration: all that test and predict need."""

    model: AnomalyModel
    config: Config
    calibration: dict
    device: torch.device
    info: dict


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DefectmapError(f"train.device={name} but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: Config) -> AnomalyModel:
    return MODELS[cfg.method](cfg.model)


def load(path: str | Path, device: str = "auto") -> Detector:
    """Rebuild a Detector from a checkpoint file alone."""
    payload = load_checkpoint(path)
    cfg = resolve_config(payload["config"])
    model = build_model(cfg)
    model.load_state_dict(payload["state_dict"])
    dev = resolve_device(device)
    model.to(dev).eval()
    info = {k: payload[k] for k in ("versions", "category", "history") if k in payload}
    return Detector(model, cfg, payload["calibration"], dev, info)


def _loader(dataset: ImageDataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, **kw) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, **kw)


@torch.no_grad()
def infer(model: AnomalyModel, dataset: ImageDataset, batch_size: int, device: torch.device) -> Iterator[dict]:
    """Scores and original-size maps for every item of `dataset`, in order (the shared inference path)."""
    model.eval()
    for batch in _loader(dataset, batch_size):
        out = model(batch["image"].to(device))
        for i in range(len(out.score)):
            size = tuple(int(s) for s in batch["size"][i])
            yield {
                "index": int(batch["index"][i]),
                "score": float(out.score[i]),
                "map": resize_map(out.anomaly_map[i], size),
            }


@torch.no_grad()
def _validation_loss(model: AnomalyModel, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        total += float(model.validation_loss(batch)) * len(batch["image"])
        count += len(batch["image"])
    return total / max(count, 1)


def fit(cfg: Config, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Train `cfg.method` on the normal images of `cfg.data`, calibrate on validation, save `model.ckpt`."""
    category = open_category(cfg.data)
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    size, data = cfg.data.image_size, cfg.data
    train_set = ImageDataset(category.train, size, cache=data.cache, max_pixels=data.max_pixels)
    val_samples = category.val or category.train
    val_set = ImageDataset(val_samples, size, cache=data.cache, max_pixels=data.max_pixels)
    if data.cache:  # decode everything up front: a bad image fails now, before any output exists
        for dataset in (train_set, val_set):
            for i in tqdm(range(len(dataset)), desc="loading images", disable=not progress, leave=False):
                dataset[i]
    model = build_model(cfg).to(device)
    batch_size = min(cfg.train.batch_size, len(train_set))
    train_loader = _loader(
        train_set, batch_size, shuffle=True, seed=cfg.train.seed, drop_last=True, num_workers=data.num_workers
    )
    val_loader = _loader(val_set, cfg.train.eval_batch_size)
    model.prepare(batch["image"].to(device) for batch in _loader(train_set, cfg.train.eval_batch_size))
    optimizers = {
        name: torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        for name, params in model.optimizer_groups().items()
    }
    best_loss, best_state, stale, history = math.inf, None, 0, []
    start = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        model.train()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not progress, leave=False)
        seen, epoch_start, running = 0, time.perf_counter(), 0.0
        for batch in bar:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            losses = model.loss(batch)
            # One optimizer per loss (e.g. generator, then discriminator); earlier graphs are kept for later ones.
            for i, (name, optimizer) in enumerate(optimizers.items()):
                optimizer.zero_grad(set_to_none=True)
                losses[name].backward(retain_graph=i < len(optimizers) - 1)
                optimizer.step()
            seen += len(batch["image"])
            value = losses["loss"].item()
            running = value if not running else 0.9 * running + 0.1 * value
            bar.set_postfix(loss=f"{running:.4g}", img_s=f"{seen / (time.perf_counter() - epoch_start):.1f}")
        val_loss = _validation_loss(model, val_loader, device)
        if not math.isfinite(val_loss):
            raise DefectmapError(f"validation loss became {val_loss} at epoch {epoch + 1}; lower train.lr")
        history.append(
            {"epoch": epoch + 1, "train_loss": running, "val_loss": val_loss, "seconds": time.perf_counter() - start}
        )
        if progress:
            tqdm.write(f"epoch {epoch + 1}: train loss {running:.5g}  val loss {val_loss:.5g}")
        if val_loss < best_loss:
            best_loss, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        if cfg.train.patience and stale >= cfg.train.patience:
            break
        if cfg.train.max_minutes and time.perf_counter() - start > 60 * cfg.train.max_minutes:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    model.calibrate(batch["image"].to(device) for batch in val_loader)
    val_results = list(infer(model, val_set, cfg.train.eval_batch_size, device))
    calibration = calibrate(
        [r["score"] for r in val_results], [r["map"] for r in val_results], cfg.train.false_reject_rate
    )
    out = Path(out_dir)
    path = out / "model.ckpt"
    save_checkpoint(
        path, model=model, config=config_to_dict(cfg), calibration=calibration, category=category.name, history=history
    )
    atomic_write(out / "history.json", lambda tmp: tmp.write_text(json.dumps(history, indent=2)))
    return path


def evaluate(detector: Detector, category: CategoryData, *, progress: bool = True) -> dict:
    """Image and pixel metrics on the test split, with maps at each image's original resolution."""
    if not category.test:
        raise DataError(f"category {category.name} has no test images to evaluate")
    cfg = detector.config.data
    dataset = ImageDataset(category.test, cfg.image_size, max_pixels=cfg.max_pixels)
    labels, scores, masks, maps = [], [], [], []
    results = infer(detector.model, dataset, detector.config.train.eval_batch_size, detector.device)
    for result in tqdm(results, total=len(dataset), desc="evaluating", disable=not progress, leave=False):
        sample = category.test[result["index"]]
        labels.append(sample.label)
        scores.append(result["score"])
        if category.has_masks:
            size = result["map"].shape
            masks.append(load_mask(sample.mask_path, size) if sample.mask_path else np.zeros(size, dtype=bool))
            maps.append(result["map"])
    threshold = detector.calibration["threshold"]
    labels_np, scores_np = np.array(labels), np.array(scores)
    report = {
        "method": detector.config.method,
        "category": category.name,
        "test_images": len(labels),
        "defective_images": int(labels_np.sum()),
        "image_auroc": metrics.image_auroc(labels_np, scores_np),
        "pixel_auroc": None,
        "aupro": None,
        "pixel_ap": None,
        "f1_max": None,
        "threshold": threshold,
        "good_rejected": int(((scores_np > threshold) & (labels_np == 0)).sum()),
        "defects_missed": int(((scores_np <= threshold) & (labels_np == 1)).sum()),
        "notes": list(category.notes),
    }
    if category.has_masks:
        report.update(metrics.pixel_metrics(masks, maps))
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}


def predict(detector: Detector, samples: list[Sample], *, progress: bool = True) -> Iterator[dict]:
    """Per image: score, normalised score (threshold -> 0.5), decision and original-size map."""
    cfg = detector.config.data
    dataset = ImageDataset(samples, cfg.image_size, max_pixels=cfg.max_pixels)
    cal = detector.calibration
    results = infer(detector.model, dataset, detector.config.train.eval_batch_size, detector.device)
    for result in tqdm(results, total=len(dataset), desc="predicting", disable=not progress):
        yield {
            "path": samples[result["index"]].path,
            "score": result["score"],
            "normalised_score": float(normalise(result["score"], cal["score_median"], cal["threshold"])),
            "defective": result["score"] > cal["threshold"],
            "map": result["map"],
        }

"""fit / evaluate / predict as plain loops over the model contract (`loss(batch)`, `forward(images)`)."""

from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from defectmap import metrics
from defectmap.checkpoint import EXPORT_SUFFIXES, load_checkpoint, versions
from defectmap.config import Config, check_tiling, resolve_config
from defectmap.data.dataset import ImageDataset, collate
from defectmap.data.images import load_mask
from defectmap.data.mvtec import CategoryData, Sample, leave_out_trained_files, open_category
from defectmap.data.transforms import resize_map
from defectmap.errors import DataError, DefectmapError
from defectmap.export import load_exported
from defectmap.models import MODELS, AnomalyModel
from defectmap.progress import bars_off
from defectmap.regions import region_figures, region_hits
from defectmap.threshold import OUTLOOK_KEYS, calibration_outlook, normalise


@dataclass
class Detector:
    """A trained model with its resolved config and calibration: all that test and predict need."""

    model: AnomalyModel  # or an exported-graph runner with the same call contract (see export.py)
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
    model = MODELS[cfg.method](cfg.model, cfg.postprocess)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


def load(path: str | Path, device: str = "auto") -> Detector:
    """Rebuild a Detector from a checkpoint file alone, or from an exported `.onnx` / `.ts` model."""
    path = Path(path)
    dev = resolve_device(device)
    if path.suffix in EXPORT_SUFFIXES.values():
        return load_exported(path, dev)
    payload = load_checkpoint(path)
    cfg = resolve_config(payload["config"])
    model = build_model(cfg)
    model.load_state_dict(payload["state_dict"])
    model.to(dev).eval()
    keys = ("versions", "category", "history", "training_normals", "training_anomalies", "trained_files")
    info = {k: payload[k] for k in keys if k in payload}
    return Detector(model, cfg, payload["calibration"], dev, info)


@torch.no_grad()
def score_batch(model: AnomalyModel, images: torch.Tensor, sizes: list[tuple[int, int]], device) -> list[dict]:
    """Scores and maps resized to each image's original (H, W) for a preprocessed (B, 3, S, S) batch."""
    out = model(images.to(device))
    return [{"score": float(out.score[i]), "map": resize_map(out.anomaly_map[i], size)} for i, size in enumerate(sizes)]


@torch.no_grad()
def infer(model: AnomalyModel, dataset: ImageDataset, batch_size: int, device: torch.device) -> Iterator[dict]:
    """Scores and original-size maps for every item of `dataset`, in order (the shared inference path).

    Items the dataset could not read (only with `skip_errors`) come out as {"index", "error"}, in their place.
    """
    model.eval()
    if dataset.tile:
        yield from _infer_tiled(model, dataset, batch_size, device)
        return
    for batch, errors in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        rows = list(errors)
        if batch is not None:
            sizes = [(int(h), int(w)) for h, w in batch["size"]]
            results = score_batch(model, batch["image"], sizes, device)
            rows += [{"index": i, **r} for i, r in zip(batch["index"].tolist(), results, strict=True)]
        yield from sorted(rows, key=lambda row: row["index"])


def _infer_tiled(model: AnomalyModel, dataset: ImageDataset, batch_size: int, device) -> Iterator[dict]:
    """Large images: score overlapping tiles, stitch their maps (mean where they overlap) at full size.

    The image score is the stitched map's maximum with `tile_score=map`, else the highest window score (`window`,
    and `auto` where training did not choose); an image no larger than one tile is one window.
    """
    for item, errors in DataLoader(dataset, batch_size=1, collate_fn=collate):
        yield from errors
        if item is None:
            continue
        tiles, boxes = item["tiles"][0], item["boxes"][0].tolist()
        height, width = (int(v) for v in item["size"][0])
        total, count = np.zeros((height, width), np.float64), np.zeros((height, width), np.float64)
        scores = []
        for start in range(0, len(tiles), batch_size):
            chunk = boxes[start : start + batch_size]
            sizes = [(y1 - y0, x1 - x0) for y0, y1, x0, x1 in chunk]
            for (y0, y1, x0, x1), result in zip(chunk, score_batch(model, tiles[start : start + batch_size], sizes,
                                                                     device), strict=True):  # fmt: skip
                total[y0:y1, x0:x1] += result["map"]
                count[y0:y1, x0:x1] += 1
                scores.append(result["score"])
        stitched = (total / count).astype(np.float32)
        score = float(stitched.max()) if dataset.tile_score == "map" else max(scores)
        yield {"index": int(item["index"][0]), "score": score, "map": stitched}


def decide(calibration: dict, score: float) -> dict:
    """Normalised score (validation median -> 0, threshold -> 0.5) and the pass/fail decision, as a flag and as the
    word scores.csv and the service write."""
    defective = score > calibration["threshold"]
    return {
        "normalised_score": float(normalise(score, calibration["score_median"], calibration["threshold"])),
        "defective": defective,
        "decision": "defect" if defective else "good",
    }


def scoring_set(config: Config, samples: list[Sample], skip_errors: bool = False) -> ImageDataset:
    """What thresholds are set on and `test` and `predict` score: whole images, or overlapping tiles (`data.tile`)."""
    check_tiling(config)
    data = config.data
    return ImageDataset(samples, data.image_size, max_pixels=data.max_pixels, skip_errors=skip_errors,
                        tile=data.tile, tile_overlap=data.tile_overlap, tile_score=data.tile_score)  # fmt: skip


def _tiling(tile: int, tile_score: str = "window") -> str:
    """Whole images, or tiles with the rule that reads an image's score from them (auto unchosen: the window)."""
    if not tile:
        return "whole images"
    return f"{tile}-pixel tiles" + (" (by the stitched map's maximum)" if tile_score == "map" else "")


def _tiling_record(data) -> dict | None:
    """How `test` scored: None for whole images, else the tiles and how an image's score is read from them."""
    if not data.tile:
        return None
    score = "stitched map maximum" if data.tile_score == "map" else "highest window"  # auto unchosen: the window
    return {"tile": data.tile, "tile_overlap": data.tile_overlap, "image_score": score}


def tiling_mismatch(detector: Detector) -> str | None:
    """What is wrong when a detector scores at another tiling than its threshold was set at (None: nothing)."""
    tile, calibration = detector.config.data.tile, detector.calibration
    scored = _tiling(tile, detector.config.data.tile_score)
    # older checkpoints: whole images; before data.tile_score, the highest window
    calibrated = _tiling(calibration.get("tile", 0), calibration.get("tile_score", "window"))
    if scored == calibrated:
        return None
    return (
        f"the threshold was set on {calibrated} and these are scored as {scored}: the decisions "
        f"(and good_rejected, defects_missed) do not hold for them; `defectmap threshold MODEL --tile {tile}` sets one "
        "for these"
    )


def test_outputs(detector: Detector, category: CategoryData, *, progress: bool = True) -> dict:
    """Labels, scores, and (with ground truth) masks and maps at original size for the test split."""
    if not category.test:
        raise DataError(f"category {category.name} has no test images to evaluate")
    dataset = scoring_set(detector.config, category.test)  # a tiling mismatch is among evaluate's notes
    outputs = {"labels": [], "scores": [], "masks": [], "maps": [], "seconds": 0.0}
    results = infer(detector.model, dataset, detector.config.train.eval_batch_size, detector.device)
    start = time.perf_counter()
    for result in tqdm(results, total=len(dataset), desc="evaluating", disable=bars_off(progress), leave=False):
        outputs["seconds"] += time.perf_counter() - start  # decoding, model and map resizing; not mask I/O
        sample = category.test[result["index"]]
        outputs["labels"].append(sample.label)
        outputs["scores"].append(result["score"])
        if category.has_masks:
            size = result["map"].shape
            mask = load_mask(sample.mask_path, size) if sample.mask_path else np.zeros(size, dtype=bool)
            outputs["masks"].append(mask)
            outputs["maps"].append(result["map"])
        start = time.perf_counter()
    return outputs


def test_split(detector: Detector, category: CategoryData | None = None) -> CategoryData:
    """What a detector is evaluated on: its dataset's test split (or `category`'s), without the files its checkpoint
    records it trained or calibrated on."""
    category = category or open_category(detector.config.data, normals=False)
    leave_out_trained_files(category, detector.info)
    return category


def evaluate(detector: Detector, category: CategoryData, *, progress: bool = True, outputs: dict | None = None) -> dict:
    """Image and pixel metrics on the test split, with maps at each image's original resolution."""
    outputs = outputs or test_outputs(detector, category, progress=progress)
    labels, scores, masks, maps = outputs["labels"], outputs["scores"], outputs["masks"], outputs["maps"]
    threshold = detector.calibration["threshold"]
    labels_np, scores_np = np.array(labels), np.array(scores)
    report = {
        "method": detector.config.method,
        "category": category.name,
        "test_images": len(labels),
        "defective_images": int(labels_np.sum()),
        "image_auroc": metrics.image_auroc(labels_np, scores_np),
        # how far image AUROC could move on another test set of this size and mix (bootstrap over the images)
        "image_auroc_interval95": metrics.image_auroc_interval(labels_np, scores_np),
        "pixel_auroc": None,
        "aupro": None,
        "pixel_ap": None,
        "f1_max": None,
        "threshold": threshold,
        "good_rejected": int(((scores_np > threshold) & (labels_np == 0)).sum()),
        # what the threshold promised for new good images (None: a max-F1 threshold from before it was recorded)
        **(calibration_outlook(detector.calibration) or dict.fromkeys(OUTLOOK_KEYS)),
        "calibration_images": detector.calibration.get("val_images"),
        "defects_missed": int(((scores_np <= threshold) & (labels_np == 1)).sum()),
        "inference_images_per_s": len(labels) / max(outputs["seconds"], 1e-9),
        "notes": list(category.notes) + [note for note in [tiling_mismatch(detector)] if note],
        "model": dataclasses.asdict(detector.config.model),  # e.g. which backbone, and whether pretrained
        "image_size": detector.config.data.image_size,
        "tiling": _tiling_record(detector.config.data),
        "postprocess": dataclasses.asdict(detector.config.postprocess),
        "device": str(detector.device),
        "versions": versions(),  # of this evaluation; the checkpoint keeps those it was trained with
        # which real anomalies trained the model, as its checkpoint recorded them (older ones: drawn again here)
        "training_anomalies": detector.info.get("training_anomalies") or category.anomaly_record(),
        # what trained the model, as its checkpoint recorded it (older checkpoints: the category's good images)
        "training_normals": detector.info.get("training_normals") or category.normals_record(),
        "defect_types": metrics.per_defect_type(labels, scores, [s.defect for s in category.test], threshold),
        "images": [
            {"path": str(category.test[i].path), "defect": category.test[i].defect, "label": label, "score": score}
            for i, (label, score) in enumerate(zip(labels, scores, strict=True))
        ],
    }
    if category.has_masks:
        report.update(metrics.pixel_metrics(masks, maps))
        # What predict's regions.csv would outline on these images, against the marked defects
        hits = [region_hits(m, mask, detector.calibration, [1]) for m, mask in zip(maps, masks, strict=True)]
        [report["regions"]] = region_figures(hits, labels, [1])
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}


def _as_samples(images) -> list[Sample]:
    """`predict`'s input as Samples: one image or a list of them; a 4-D array (B, H, W, C) is a batch of frames."""
    if isinstance(images, (str, Path, Sample, Image.Image)) or (
        isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim < 4
    ):
        images = [images]
    samples = []
    for i, item in enumerate(images):
        if isinstance(item, Sample):
            samples.append(item)
        elif isinstance(item, (str, Path)):
            samples.append(Sample(Path(item), 0))
        else:  # pixels in memory; read (and refused if unreadable) with the files, in the dataset
            samples.append(Sample(Path(f"<image {i}>"), 0, image=item))
    return samples


def predict(detector: Detector, images, *, progress: bool = True) -> Iterator[dict]:
    """Per image: score, normalised score (threshold -> 0.5), decision and map at the image's original size.

    `images` is one image or a list of them, each an image file path, a `Sample`, a PIL image or a numpy array
    (H, W[, C]) RGB(A) in uint8, uint16 or float in [0, 1]; a 4-D array is a batch of frames. Rows come in input
    order with its `index`; `path` is None for in-memory images. An unreadable image yields {"index", "path",
    "error"} instead, and prediction goes on.
    """
    samples = _as_samples(images)
    if mismatch := tiling_mismatch(detector):
        warnings.warn(mismatch, stacklevel=2)
    dataset = scoring_set(detector.config, samples, skip_errors=True)
    cal = detector.calibration
    results = infer(detector.model, dataset, detector.config.train.eval_batch_size, detector.device)
    for result in tqdm(results, total=len(dataset), desc="predicting", disable=bars_off(progress)):
        index = result["index"]
        row = {"index": index, "path": samples[index].path if samples[index].image is None else None}
        if "error" in result:
            yield {**row, "error": result["error"]}
            continue
        yield {**row, "score": result["score"], "map": result["map"], **decide(cal, result["score"])}

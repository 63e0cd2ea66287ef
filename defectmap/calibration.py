"""Calibration on validation normals: thresholds and normalisation, and with data.tile=auto, the rule that reads a
tiled image's score. Only normal images (or a user's validation defects) take part, never the test split."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from defectmap import metrics
from defectmap.config import Config, check_rate
from defectmap.data.dataset import ImageDataset
from defectmap.data.mvtec import Sample, open_category
from defectmap.data.tiles import TiledProbe
from defectmap.engine import Detector, infer, scoring_set
from defectmap.models import AnomalyModel
from defectmap.progress import bars_off
from defectmap.threshold import calibrate, false_reject_outlook, threshold_max_f1, unreliable_rate_warning


@torch.no_grad()
def choose_tile_score(
    cfg: Config, model: AnomalyModel, samples: list[Sample], device, progress: bool = False
) -> tuple[dict, list[tuple[float, np.ndarray]]]:
    """`data.tile_score=auto`: of the highest window score and the stitched map's maximum, keep the one whose image
    AUROC on the validation normals, whole and with a synthetic defect in one tile-sized window, is best (ties: the
    window, each model's own rule). Run after training, or by `recalibrate` when a model trained on whole images is
    first calibrated for tiles. Written into `cfg.data`, so the checkpoint records it. Returns both AUROCs, and each
    normal's (score by the chosen rule, stitched map) as `scoring_set` would give them, for the thresholds."""
    model.eval()
    probe = TiledProbe(samples, cfg.data, cfg.train.seed + 11)
    results = tqdm(infer(model, probe, cfg.train.eval_batch_size, device), "choosing the tiled image score",
                   len(probe), disable=bars_off(progress), leave=False)  # fmt: skip
    labels, windows, maps, normals = [], [], [], []  # normals: (window, map maximum, stitched map) each
    for result in results:  # the probe scores each image by its highest window; the map's maximum is read beside it
        labels.append(int(result["index"] >= len(samples)))
        windows.append(result["score"])
        maps.append(float(result["map"].max()))
        if not labels[-1]:
            normals.append((windows[-1], maps[-1], result["map"]))
    aurocs = {"window": metrics.image_auroc(labels, windows), "map": metrics.image_auroc(labels, maps)}
    cfg.data.tile_score = "map" if aurocs["map"] > aurocs["window"] else "window"
    if progress:
        tqdm.write(f"synthetic image AUROC of tiled images: highest window {aurocs['window']:.3f}, stitched map "
                   f"maximum {aurocs['map']:.3f}; chose data.tile_score={cfg.data.tile_score}")  # fmt: skip
    by_map = cfg.data.tile_score == "map"
    return aurocs, [(maximum if by_map else window, stitched) for window, maximum, stitched in normals]


def _validation_calibration(
    model: AnomalyModel, val_set: ImageDataset, batch_size: int, device, false_reject_rate: float, progress: bool,
    scored: list[tuple[float, np.ndarray]] | None = None,
) -> tuple[dict, list[float]]:  # fmt: skip
    """Thresholds and normalisation from the validation normals, and their image scores; `scored`: their (score,
    map) pairs where already scored (`choose_tile_score`), so they are not scored twice."""
    if scored is None:
        results = tqdm(infer(model, val_set, batch_size, device), "thresholds from the validation normals",
                       len(val_set), disable=bars_off(progress), leave=False)  # fmt: skip
        scored = [(r["score"], r["map"]) for r in results]
    scores = [score for score, _ in scored]
    if len(scores) > 1 and max(scores) == min(scores):
        warnings.warn("every validation image has the same score: the model may not have learned; "
                      "thresholds and AUROC will be meaningless", stacklevel=3)  # fmt: skip
    return calibrate(scores, [m for _, m in scored], false_reject_rate), scores


def calibrate_on_validation(
    model: AnomalyModel,
    val_set: ImageDataset,
    batch_size: int,
    device,
    false_reject_rate: float,
    progress: bool = False,
    scored: list[tuple[float, np.ndarray]] | None = None,
) -> dict:
    """Thresholds and normalisation from held-out normal images only (never the test split)."""
    return _validation_calibration(model, val_set, batch_size, device, false_reject_rate, progress, scored)[0]


def recalibrate(
    detector: Detector,
    false_reject_rate: float,
    defects: list[Sample] | None = None,
    progress: bool = False,
    good: list[Sample] | None = None,
) -> dict:
    """New thresholds for a trained detector without retraining: at `false_reject_rate` on the validation
    normals, or, given a user validation set of defective images, at the best image F1 on both. `good` replaces the
    validation normals with the user's own good images (say, parts the model never trained on); the dataset is then
    not read."""
    check_rate("the false-reject rate", false_reject_rate)
    data = detector.config.data
    normals = good if good else open_category(data).val
    scored = None
    if data.tile and data.tile_score == "auto":  # trained on whole images, now calibrated for tiles: choose the rule
        scored = choose_tile_score(detector.config, detector.model, normals, detector.device, progress)[1]
    val_set = scoring_set(detector.config, normals)
    if not defects and (warning := unreliable_rate_warning(len(val_set), false_reject_rate)):
        warnings.warn(warning, stacklevel=2)
    batch, model, device = detector.config.train.eval_batch_size, detector.model, detector.device
    calibration, good_scores = _validation_calibration(model, val_set, batch, device, false_reject_rate, progress,
                                                       scored)  # fmt: skip
    calibration.update(tile=data.tile, tile_score=data.tile_score)
    which = "user-given good" if good else "good validation"
    if not defects:
        calibration["threshold_rule"] = f"false-reject rate {false_reject_rate} on {len(val_set)} {which} images"
        return calibration
    bad_set = scoring_set(detector.config, defects)
    bad = [r["score"] for r in tqdm(infer(model, bad_set, batch, device), "scoring the defective images", len(bad_set),
                                    disable=bars_off(progress), leave=False)]  # fmt: skip
    labels = [0] * len(good_scores) + [1] * len(bad)
    calibration["threshold"] = threshold_max_f1(labels, good_scores + bad)
    calibration.update(false_reject_outlook(np.array(good_scores), calibration["threshold"]))
    calibration["threshold_rule"] = (
        f"max image F1 on {len(good_scores)} {which} and {len(bad)} defective validation images"
    )
    return calibration

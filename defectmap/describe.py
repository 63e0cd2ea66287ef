"""What a checkpoint or exported model is: `defectmap info MODEL` and the service's GET /model.

The method, what trained it (dataset, images, real anomalies, epochs), the error-map filters, the threshold with its
rule and promise, and the library versions that wrote the file, from the file alone.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from torch import nn

from defectmap.models import MODELS
from defectmap.text import plural
from defectmap.threshold import calibration_outlook, promised_rates


def method_title(method: str) -> str:
    """The first line of a method's module docstring (what `defectmap models` lists)."""
    cls = MODELS[method]
    doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
    return doc[0] if doc else cls.__name__


def run_length(epochs: int, steps: int | None, seconds: float, validated: int | None = None) -> str:
    """How long a run trained: "340 epochs (1020 optimizer steps, validated 12 times) in 3 min 46 s"; the
    validations only where fewer than the epochs (train.validate_every); histories written before the step count
    was recorded, steps None, give the epochs alone."""
    minutes, seconds = divmod(round(seconds), 60)
    counted = [plural(steps, "optimizer step")] if steps is not None else []
    if validated is not None and validated < epochs:
        counted.append(f"validated {plural(validated, 'time')}")
    counts = f" ({', '.join(counted)})" if counted else ""
    return f"{plural(epochs, 'epoch')}{counts} in {minutes} min {seconds} s"


def threshold_rule(calibration: dict) -> str:
    """How the threshold was set: recorded by `threshold`, or train's false-reject rule on its validation images."""
    tiles = f", scored as {calibration['tile']}-pixel tiles" if calibration.get("tile") else ""
    if "threshold_rule" in calibration:
        return calibration["threshold_rule"] + tiles
    if "false_reject_rate" in calibration:
        n = calibration["val_images"]
        return f"false-reject rate {calibration['false_reject_rate']} on {plural(n, 'good image')}{tiles}"
    return "rule not recorded"


def validated_epochs(history: list[dict]) -> list[dict]:
    """The rows of `history` whose epoch validated (all, unless train.validate_every or train.min_steps spaced
    them; the others have no validation loss)."""
    return [epoch for epoch in history if epoch["val_loss"] is not None]


def validations(history: list[dict]) -> int:
    """How many of the epochs in `history` validated."""
    return len(validated_epochs(history))


def kept_epoch(history: list[dict]) -> tuple[dict | None, str, float | None]:
    """(the history row whose weights training kept, the measure it was kept on, its value): the lowest validation
    loss, or with train.select=probe the highest synthetic-probe quality (the first such epoch either way), among
    the validated epochs (train.validate_every)."""
    validated = validated_epochs(history)
    if not validated:
        return None, "", None
    if "probe" in validated[0]:
        best = max(validated, key=lambda epoch: epoch["probe"]["quality"])
        return best, "synthetic-probe quality", best["probe"]["quality"]
    best = min(validated, key=lambda epoch: epoch["val_loss"])
    return best, "validation loss", best["val_loss"]


def describe(detector) -> dict:
    """Everything `info` prints, as JSON-ready values (absent records are None: older checkpoints, exports)."""
    cfg, cal, info = detector.config, detector.calibration, detector.info
    history = info.get("history") or []
    best, measure, value = kept_epoch(history)
    model = detector.model
    return {
        "method": cfg.method,
        "title": method_title(cfg.method),
        "category": info.get("category") or cfg.data.category or Path(cfg.data.good_dir or cfg.data.root).name,
        "dataset": {"root": cfg.data.root, "format": cfg.data.format, "good_dir": cfg.data.good_dir},
        "image_size": cfg.data.image_size,
        "parameters": sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else None,
        "threshold": cal["threshold"],
        "threshold_rule": threshold_rule(cal),
        "calibration_images": cal.get("val_images"),
        **(calibration_outlook(cal) or {"expected_false_reject_rate": None, "false_reject_rate_95": None}),
        "training_normals": info.get("training_normals"),
        "training_anomalies": info.get("training_anomalies"),
        "epochs": len(history) or None,
        "best_epoch": best["epoch"] if best else None,
        "best_val_loss": best["val_loss"] if best else None,
        "kept_on": {"measure": measure, "value": value} if best else None,
        "averaged_weights": bool(best and best.get("averaged_weights")),
        "training_seconds": history[-1]["seconds"] if history else None,
        "optimizer_steps": history[-1].get("step") if history else None,
        "validations": validations(history) if history else None,
        "postprocess": dataclasses.asdict(cfg.postprocess),
        "calibration": {k: v for k, v in cal.items() if not isinstance(v, list)},  # per-position statistics left out
        "config": {
            "data": dataclasses.asdict(cfg.data),
            "train": dataclasses.asdict(cfg.train),
            "model": dataclasses.asdict(cfg.model),
        },
        "versions": info.get("versions", {}),
    }


def describe_lines(d: dict) -> list[str]:
    """`describe`'s dict as the lines `defectmap info` prints."""
    where = d["dataset"]["good_dir"] or d["dataset"]["root"]
    data = d["config"]["data"]
    tiles = f" from {data['tile']}-pixel tiles (overlap {data['tile_overlap']})" if data["tile"] else ""
    input_line = f"  category:     {d['category']} ({where}), input {d['image_size']}²{tiles}"
    lines = [f"{d['method']}: {d['title']}", input_line]
    if data["tile"]:  # unchosen (trained on whole images) or written before data.tile_score: the highest window
        rule = "the maximum of its stitched map" if data.get("tile_score") == "map" else "its highest window's score"
        lines.append(f"  image score:  {rule} (data.tile_score)")
    if backbone := d["config"]["model"].get("backbone"):  # PRN's frozen feature extractor
        weights = "ImageNet weights" if d["config"]["model"].get("pretrained", True) else "random init"
        lines.append(f"  backbone:     {backbone}, {weights}")
    normals = d["training_normals"]
    if normals:
        drawn = f" (a draw of {normals['train_images']})" if normals["train_images"] else ""
        unseen = normals["unseen_parts"] and f"; shots of test parts left out (similarity {normals['unseen_parts']:g})"
        lines.append(
            f"  trained on:   {normals['train']} good images{drawn}, {normals['val']} for validation{unseen or ''}"
        )
    anomalies = d["training_anomalies"]
    if anomalies and anomalies["count"]:
        lines.append(f"  anomalies:    {anomalies['count']} real ones from the test split (seed {anomalies['seed']}, "
                     f"{anomalies['sampling']}), left out of its evaluation")  # fmt: skip
    if d["epochs"]:
        weights = "averaged weights" if d["averaged_weights"] else "weights"
        length = run_length(d["epochs"], d["optimizer_steps"], d["training_seconds"], d["validations"])
        lines.append(f"  training:     {length}; the {weights} of epoch "
                     f"{d['best_epoch']} kept ({d['kept_on']['measure']} {d['kept_on']['value']:.5g})")  # fmt: skip
    post = d["postprocess"]
    filters = [name for name, key in (("HEE", "hee"), ("position normalisation", "normalize")) if post[key]]
    lines.append(f"  map filters:  {', '.join(filters) or 'none'}")
    lines.append(f"  threshold:    {d['threshold']:.6g} ({d['threshold_rule']})")
    if d["expected_false_reject_rate"] is not None:
        lines.append(f"  promise:      {promised_rates(d)}")
    if d["parameters"] is not None:
        lines.append(f"  parameters:   {d['parameters'] / 1e6:.2f} M")
    versions = ", ".join(f"{k} {v}" for k, v in d["versions"].items())
    lines.append(f"  written with: {versions or 'not recorded'}")
    return lines

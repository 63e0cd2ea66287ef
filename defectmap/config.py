"""Plain dataclass configuration: defaults, then a YAML preset, then `--set a.b=c` overrides."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from defectmap.errors import ConfigError
from defectmap.models.hee import PostprocessConfig


@dataclass
class DataConfig:
    root: str = ""  # dataset root; for `mvtec` the folder that holds <category>/
    category: str = ""  # the category folder under root (MVTec layout)
    format: str = "auto"  # auto | mvtec | mpdd | folder | visa | btad | ksdd2 | dagm | mt (Magnetic Tile release)
    image_size: int = 256  # model input is image_size x image_size
    val_fraction: float = 0.1  # share of train/good held out as normal validation images
    split_seed: int = 0  # seed of the validation split; runs with other train.seed keep the same split
    cache: bool = True  # keep preprocessed training images in memory
    num_workers: int = 0  # DataLoader worker processes that decode images (0: in the main process)
    max_pixels: int = 100_000_000  # larger images are refused (decompression-bomb guard)
    # Train, calibrate, test and predict on overlapping tile x tile windows of the original images, each resized
    # to image_size (0: whole images); for large images with small defects. See data/tiles.py.
    tile: int = 0
    tile_overlap: int = 32  # pixels shared by neighbouring tiles
    # A tiled image's score: window (the highest window score, the model's own rule on each window), map (the
    # maximum of the stitched map, where overlapping windows must agree), or auto (training chooses the one that
    # best separates validation normals from copies with a synthetic defect; left unchosen: window)
    tile_score: str = "auto"
    # Few-shot protocol (models that learn from anomalies, e.g. prn): k real anomalies drawn from the test
    # split with anomaly_seed, used for training and removed from evaluation.
    anomalies: int = 0
    anomaly_seed: int = 0  # which k anomalies are drawn (the benchmark sets it to the run's seed)
    # uniform: any k defective images; per_type: as even a share of every defect type (folder) as k allows
    anomaly_sampling: str = "uniform"
    # Also leave out of evaluation the test images that are near-copies of the drawn anomalies (other shots of the
    # same part: data/near_copies.py) at this similarity or more; 0 turns it off, 0.7 suits Magnetic Tile.
    near_copy_similarity: float = 0.0
    # Leave out of training and validation the good images that are near-copies of any test image (another shot of
    # a tested part) at this similarity or more, so the test shows parts the model never saw; 0 turns it off, 0.7
    # suits Magnetic Tile.
    unseen_parts: float = 0.0
    train_images: int = 0  # train on this many of the good training images, drawn with split_seed (0: all of them)
    texture_dir: str = ""  # textures for synthetic anomalies (e.g. DTD); empty: built-in procedural textures
    foreground_dir: str = ""  # masks of where defects may be pasted on normal images (by name, tiled too); empty: Otsu
    # `folder` format: a folder of good images, optionally defective images and their masks
    good_dir: str = ""  # good images to train on (empty: a --data folder that holds images itself)
    test_good_dir: str = ""  # good test images, searched recursively (optional)
    defect_dir: str = ""  # defective test images, searched recursively; a subfolder names a defect type (optional)
    mask_dir: str = ""  # their masks, paired by name: <stem>_mask, <stem>, <stem>_GT (optional; else image metrics)


@dataclass
class TrainConfig:
    epochs: int = 50  # at most; early stopping may end sooner (patience)
    # Optimizer steps a run takes at least: where train.epochs would take fewer (a few dozen images), the run trains
    # the epochs that take them, and early stopping does not end it before them. 0 turns it off. Each method
    # defaults it to the steps its results were measured with (prn 1020, the others 630); train.epochs given
    # without it turns it off.
    min_steps: int = 0
    batch_size: int = 16  # training images per step
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay
    # Exponential moving average of the weights, per optimizer step: validated, kept and saved instead of the
    # last step's weights. 0 turns it off; 0.995 averages over about the last 200 steps.
    ema_decay: float = 0.0
    seed: int = 0  # initialisation, image order and synthetic anomalies
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    patience: int = 10  # epochs without validation improvement before stopping; 0 disables
    # Optimizer steps without improvement that early stopping also waits for: a run stops once both `patience`
    # epochs and this many steps passed since the kept epoch. For runs on few images, where an epoch is a few steps.
    patience_steps: int = 0
    # Which epoch's weights are kept, and what patience counts: loss (the validation loss, lowest) | probe (the
    # validation normals with synthetic anomalies pasted in: mean of the image AUROC of each map's maximum and the
    # pixel AUROC, highest; no real anomaly involved, as model.granularity=auto).
    select: str = "loss"
    # Epochs between validations (validation loss or probe, the kept weights, early stopping, last.ckpt); the last
    # epoch is always validated. 0: every epoch, or, where train.min_steps raised train.epochs, as many validations
    # as train.epochs (one every ceil(epochs run / train.epochs) epochs).
    validate_every: int = 0
    max_minutes: float = 0.0  # wall-clock budget for training; 0 means none
    eval_batch_size: int = 16  # images per batch in validation, test and predict
    false_reject_rate: float = 0.01  # share of held-out good images above the threshold
    checkpoint_every: int = 200  # steps between training-state saves to last.ckpt (also saved every epoch)
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-identical reruns, slower on GPU
    amp: str = "off"  # mixed precision: off | bf16 | fp16 (CUDA, with gradient scaling)
    # NHWC weights: on a 2-core CPU 1.0-1.8x faster training steps and 1.2-1.7x faster batch inference
    # (bench/speed.py --channels-last); false reproduces runs made before this became the default.
    channels_last: bool = True
    compile: bool = False  # torch.compile the training step (model.loss); the first steps pay for compilation


@dataclass
class Config:
    method: str = "ae"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: Any = None  # the method's own <Class>Config, filled in by `resolve_config`
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)  # error-map filter of recon models


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field annotation, allowing int -> float and list -> tuple."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} does not fit {annotation}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key} must be null, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} expects a list such as [1, 2], got {value!r}")
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        return tuple(_coerce(v, item_type, key) for v in value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{key} expects {annotation.__name__}, got {value!r}")
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{key} expects int, got {value!r}")
    return value


def apply_overrides(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Set nested dataclass fields from a nested dict; unknown keys name the valid ones."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'; valid keys here: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"'{full}' is a section; set its fields, e.g. {full}.{names[0]}=...")
            apply_overrides(current, value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """Turn ["train.epochs=5", "model.channels=[8,16]"] into a nested dict."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got '{pair}'")
        key, text = pair.split("=", 1)
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(text.strip())
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_preset(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config preset {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config preset {path} is not valid YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(values, dict):
        raise ConfigError(f"config preset {path} must be a mapping of sections (data:, train:, model:)")
    return values


def resolve_config(values: dict[str, Any], method: str | None = None) -> Config:
    """Build a Config from a nested dict (a preset merged with overrides, or a checkpoint's config)."""
    from defectmap.models import MODELS

    values = dict(values)
    method = method or values.pop("method", None) or "ae"
    values.pop("method", None)
    if method not in MODELS:
        raise ConfigError(f"unknown model '{method}'; available: {', '.join(MODELS)}")
    cfg = Config(method=method, model=MODELS[method].Config())
    apply_overrides(cfg, {"train": dict(MODELS[method].train_defaults)})  # the method's own recipe, then the user's
    given = values.get("train")
    if isinstance(given, dict) and "epochs" in given and "min_steps" not in given:
        cfg.train.min_steps = 0  # a schedule given in epochs is trained as given
    apply_overrides(cfg, values)
    check_values(cfg)
    return cfg


TILE_SCORES = ("auto", "window", "map")  # data.tile_score

# The smallest value of each shared numeric setting (models name theirs in `AnomalyModel.positive`).
AT_LEAST = {
    "data.anomalies": 0, "data.train_images": 0, "data.tile": 0, "data.tile_overlap": 0, "data.max_pixels": 1,
    "data.num_workers": 0,
    "train.epochs": 1, "train.min_steps": 0, "train.validate_every": 0, "train.batch_size": 1,
    "train.eval_batch_size": 1,
    "train.weight_decay": 0, "train.patience": 0, "train.patience_steps": 0, "train.max_minutes": 0,
    "train.checkpoint_every": 1,
}  # fmt: skip


def check_rate(key: str, value: float) -> None:
    """A share of images, such as a false-reject rate, must lie in [0, 1)."""
    if not 0 <= value < 1:
        raise ConfigError(f"{key} must be in [0, 1), got {value}")


def check_tiling(cfg: Config) -> None:
    """`data.tile` with settings that cannot work on tiles: checked with every config and again before scoring (the
    Python API may set the tile on a loaded detector)."""
    data = cfg.data
    if data.tile_score not in TILE_SCORES:
        raise ConfigError(f"data.tile_score must be {', '.join(TILE_SCORES[:-1])} or {TILE_SCORES[-1]}, "
                          f"got '{data.tile_score}'")  # fmt: skip
    if data.tile and data.tile_overlap >= data.tile:
        raise ConfigError(f"data.tile_overlap must be below data.tile ({data.tile}), got {data.tile_overlap}")
    if data.tile and cfg.postprocess.normalize:
        raise ConfigError(
            "data.tile cannot be used with postprocess.normalize: its per-position statistics describe whole "
            "images, not tiles; score whole images or train without postprocess.normalize"
        )


def check_values(cfg: Config) -> None:
    """One-line errors for settings out of range: the shared ones, the model's sizes and counts
    (`AnomalyModel.positive`), and an input size the model cannot take (`AnomalyModel.input_rule`)."""
    from defectmap.models import MODELS

    model_class = MODELS[cfg.method]
    for key, low in AT_LEAST.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < low:
            raise ConfigError(f"{key} must be at least {low}, got {value}")
    if not 0 <= cfg.train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1) (0 turns averaging off), got {cfg.train.ema_decay}")
    if not cfg.train.lr > 0:
        raise ConfigError(f"train.lr must be above 0, got {cfg.train.lr}")
    if cfg.train.select not in ("loss", "probe"):
        raise ConfigError(f"train.select must be loss or probe, got '{cfg.train.select}'")
    check_rate("train.false_reject_rate", cfg.train.false_reject_rate)
    for name in ("near_copy_similarity", "unseen_parts"):
        if not 0 <= getattr(cfg.data, name) <= 1:
            raise ConfigError(f"data.{name} must be in [0, 1] (0: off), got {getattr(cfg.data, name)}")
    check_tiling(cfg)
    for name in model_class.positive:
        value = getattr(cfg.model, name)
        entries = value if isinstance(value, tuple) else (value,)
        if not entries or min(entries) <= 0:
            what = "a list of values" if isinstance(value, tuple) else "a value"
            raise ConfigError(f"model.{name} must be {what} above 0, got {value!r}")
    multiple, minimum = model_class.input_rule(cfg.model)
    size = cfg.data.image_size
    if size < minimum or size % multiple:
        near = max(minimum, multiple * max(1, round(size / multiple)))
        rule = f"a multiple of {multiple}" if multiple > 1 else f"at least {minimum}"
        rule += f" from {minimum}" if 1 < multiple < minimum else ""
        raise ConfigError(f"data.image_size={size} does not fit {cfg.method} as configured: use {rule}, e.g. {near}")


def build_config(method: str | None, preset: str | None, sets: list[str], **data: Any) -> Config:
    """CLI entry: preset file, then data arguments, then --set pairs (the last word wins)."""
    values = load_preset(preset) if preset else {}
    given = {k: v for k, v in data.items() if v is not None}
    if given:
        values = _merge(values, {"data": given})
    values = _merge(values, parse_sets(sets))
    return resolve_config(values, method)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in a config dataclass's source: the one on its line, else the block just above it."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # no source (e.g. a frozen install): no comments
        return {}
    names, comments, above = {f.name for f in dataclasses.fields(cls)}, {}, []
    for line in lines[1:]:
        if line.strip().startswith("#"):
            above.append(line.strip().lstrip("#").strip())
            continue
        code, _, inline = line.partition("  # ")
        name = code.strip().split(":", 1)[0]
        if name in names and ":" in code:
            comments[name] = inline.strip() or " ".join(above)
        above = []
    return {name: text for name, text in comments.items() if text}


def commented_yaml(cfg: Config) -> str:
    """The config as YAML, one line per key with its comment from the source; loadable as a --config preset."""
    values = config_to_dict(cfg)
    lines = []
    for section in dataclasses.fields(cfg):
        block = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(block):
            lines.append(yaml.safe_dump({section.name: values[section.name]}).rstrip())
            continue
        lines.append(f"{section.name}:")
        notes = field_comments(type(block))
        for key, value in values[section.name].items():
            if isinstance(value, list | tuple):  # one line: [16, 32, 64]
                text = f"{key}: {yaml.safe_dump(list(value), default_flow_style=True, width=10_000).strip()}"
            else:
                text = yaml.safe_dump({key: value}, width=10_000).strip()
            lines.append(f"  {text}" + (f"  # {notes[key]}" if key in notes else ""))
    return "\n".join(lines) + "\n"

"""Native on-disk layouts of other inspection datasets, read into the same train / validation / test split.

VisA (split CSV), BTAD (ok/ko), MPDD (MVTec-like), KolektorSDD2 (<id>.png + <id>_GT.png), DAGM 2007
(Class<n>/{Train,Test} with Label/ and Labels.txt) and the Magnetic Tile release (MT_<Class>/Imgs).
`detect_format` picks one from the files present; `data.format` names one explicitly.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image

from defectmap.config import DataConfig
from defectmap.data.images import is_image_file
from defectmap.data.mvtec import (
    CategoryData,
    Sample,
    _images_in,
    _split_validation,
    dataset_root,
    find_mask,
    holds_images,
)
from defectmap.errors import DataError


def _category(cfg: DataConfig, name: str, good: list[Path], test: list[Sample], has_masks: bool) -> CategoryData:
    if not good:
        raise DataError(f"no good training images found for {name} in {cfg.root} (format {cfg.format})")
    train, val = _split_validation(good, cfg.val_fraction, cfg.split_seed)
    return CategoryData(name, [Sample(p, 0) for p in train], [Sample(p, 0) for p in val], test, has_masks)


def open_visa(cfg: DataConfig) -> CategoryData:
    """VisA: ROOT/split_csv/1cls.csv rows (object, split, label, image, mask), paths relative to ROOT."""
    root = dataset_root(cfg)
    table = root / "split_csv" / "1cls.csv"
    if not table.is_file():
        raise DataError(f"VisA layout expects {table}")
    good, test = [], []
    with table.open() as handle:
        for row in csv.DictReader(handle):
            if row["object"] != cfg.category:
                continue
            path, defective = root / row["image"], row["label"] == "anomaly"
            if row["split"] == "train" and not defective:
                good.append(path)
            elif row["split"] == "test":
                mask = root / row["mask"] if defective and row.get("mask") else None
                test.append(Sample(path, int(defective), "anomaly" if defective else "good", mask))
    return _category(cfg, cfg.category, good, test, has_masks=True)


def open_btad(cfg: DataConfig) -> CategoryData:
    """BTAD: ROOT/CAT/train/ok, test/{ok,ko}, ground_truth/ko/<stem>.png or .bmp."""
    base = dataset_root(cfg) / cfg.category
    good = _images_in(base / "train" / "ok") if (base / "train" / "ok").is_dir() else []
    test = [Sample(p, 0) for p in _images_in(base / "test" / "ok")] if (base / "test" / "ok").is_dir() else []
    for path in _images_in(base / "test" / "ko") if (base / "test" / "ko").is_dir() else []:
        mask = find_mask(base / "ground_truth" / "ko", path.stem)
        if mask is None:
            raise DataError(f"no mask for {path} in {base / 'ground_truth' / 'ko'}")
        test.append(Sample(path, 1, "ko", mask))
    return _category(cfg, cfg.category, good, test, has_masks=True)


def _mask_is_empty(path: Path) -> bool:
    return not np.asarray(Image.open(path).convert("L")).any()


def open_ksdd2(cfg: DataConfig) -> CategoryData:
    """KolektorSDD2: ROOT/{train,test}/<id>.png with <id>_GT.png; empty GT = good. Defective training
    images are not used (unsupervised training)."""
    root = dataset_root(cfg)
    split = {}
    for part in ("train", "test"):
        folder = root / part
        if not folder.is_dir():
            raise DataError(f"KolektorSDD2 layout expects {folder}")
        split[part] = [(p, folder / f"{p.stem}_GT.png") for p in _images_in(folder) if not p.stem.endswith("_GT")]
    good = [p for p, gt in split["train"] if not gt.is_file() or _mask_is_empty(gt)]
    test = []
    for path, gt in split["test"]:
        defective = gt.is_file() and not _mask_is_empty(gt)
        test.append(Sample(path, int(defective), "defect" if defective else "good", gt if defective else None))
    return _category(cfg, cfg.category or "ksdd2", good, test, has_masks=True)


def _dagm_labels(folder: Path) -> dict[str, str | None]:
    """Labels.txt rows: index, flag (1 = defective), image file, 0, label file (or 0)."""
    table = folder / "Label" / "Labels.txt"
    if not table.is_file():
        raise DataError(f"DAGM layout expects {table}")
    labels = {}
    for line in table.read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5:
            labels[parts[2]] = parts[4] if parts[1] == "1" else None
    return labels


def open_dagm(cfg: DataConfig) -> CategoryData:
    """DAGM 2007: ROOT/Class<n>/{Train,Test}/*.PNG with Label/Labels.txt and Label/<stem>_label.PNG."""
    base = dataset_root(cfg) / cfg.category
    train_labels, test_labels = _dagm_labels(base / "Train"), _dagm_labels(base / "Test")
    good = [base / "Train" / name for name, mask in sorted(train_labels.items()) if mask is None]
    test = [
        Sample(base / "Test" / name, int(mask is not None), "defect" if mask else "good",
               base / "Test" / "Label" / mask if mask else None)
        for name, mask in sorted(test_labels.items())
    ]  # fmt: skip
    return _category(cfg, cfg.category, good, test, has_masks=True)


def open_mt_release(cfg: DataConfig, test_good_fraction: float = 0.2) -> CategoryData:
    """Magnetic Tile release: ROOT/MT_<Class>/Imgs/<stem>.jpg with <stem>.png masks; MT_Free holds good
    images, a seeded `test_good_fraction` of which join the defective images in the test split."""
    root = dataset_root(cfg)
    free = root / "MT_Free" / "Imgs"
    if not free.is_dir():
        raise DataError(f"Magnetic Tile release layout expects {free}")
    good = sorted(p for p in free.iterdir() if is_image_file(p) and p.suffix.lower() == ".jpg")
    random.Random(cfg.split_seed).shuffle(good)
    n_test = round(len(good) * test_good_fraction)
    test = [Sample(p, 0) for p in sorted(good[:n_test])]
    for folder in sorted(root.glob("MT_*")):
        if folder.name == "MT_Free":
            continue
        for path in sorted(p for p in (folder / "Imgs").iterdir() if is_image_file(p) and p.suffix.lower() == ".jpg"):
            mask = path.with_suffix(".png")
            if not mask.is_file():
                raise DataError(f"no mask for {path}: expected {mask}")
            test.append(Sample(path, 1, folder.name[3:].lower(), mask))
    return _category(cfg, cfg.category or "magnetic_tile", sorted(good[n_test:]), test, has_masks=True)


def detect_format(cfg: DataConfig) -> str:
    """The layout found under data.root (and data.category); `mvtec` when nothing else matches."""
    root = Path(cfg.root)
    base = root / cfg.category if cfg.category else root
    if cfg.good_dir or (cfg.root and not cfg.category and not (root / "train").is_dir() and holds_images(root)):
        return "folder"  # data.good_dir, or --data names a folder of good images
    if (root / "split_csv" / "1cls.csv").is_file():
        return "visa"
    if (root / "MT_Free" / "Imgs").is_dir():
        return "mt"
    if (base / "train" / "ok").is_dir():
        return "btad"
    if (base / "Train" / "Label" / "Labels.txt").is_file():
        return "dagm"
    if (root / "train").is_dir() and any(root.glob("train/*_GT.png")):
        return "ksdd2"
    return "mvtec"


ADAPTERS = {
    "visa": open_visa,
    "btad": open_btad,
    "ksdd2": open_ksdd2,
    "dagm": open_dagm,
    "mt": open_mt_release,
}

"""Dataset layouts on disk: MVTec AD (`train/good`, `test/<defect>`, `ground_truth/<defect>/<stem>_mask.png`),
split into train, validation (normal images carved from train, seeded) and test; `open_category` reads every layout
(the others in data/adapters.py, plain folders in data/folders.py)."""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass, field
from pathlib import Path

from defectmap.config import DataConfig
from defectmap.data.images import IMAGE_SUFFIXES, file_digest, is_image_file
from defectmap.errors import DataError

GOOD_NAMES = ("good", "ok")  # folders that hold good images in the layouts we read (MVTec, BTAD), any case
LAYOUT_HELP = "expected MVTec AD layout, or a folder that holds good images; see README#datasets"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 good, 1 defective
    defect: str = "good"
    mask_path: Path | None = None  # None for good images, or when no ground truth exists
    image: object = field(default=None, compare=False, repr=False)  # in-memory pixels (Python API); path a label


@dataclass
class CategoryData:
    name: str
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    has_masks: bool
    notes: list[str] = field(default_factory=list)
    anomalies: list[Sample] = field(default_factory=list)  # real anomalies for training, not in `test`
    anomaly_seed: int = 0  # the seed that drew them
    anomaly_sampling: str = "uniform"  # how they were drawn (data.anomaly_sampling)
    near_copies: list[Sample] = field(default_factory=list)  # other shots of their parts, not in `test` either
    near_copy_similarity: float = 0.0  # the similarity that made a near-copy (data.near_copy_similarity; 0: off)
    seen_parts: list[Sample] = field(default_factory=list)  # good images left out of training: shots of test parts
    unseen_parts: float = 0.0  # the similarity that left them out (data.unseen_parts; 0: off)
    train_limit: int = 0  # data.train_images (0: every good training image)

    def anomaly_record(self) -> dict:
        """Which real anomalies trained the model (kept in the checkpoint and metrics.json), and which near-copies
        of them were left out of the test set."""
        return {
            "count": len(self.anomalies),
            "seed": self.anomaly_seed,
            "sampling": self.anomaly_sampling,
            "paths": [str(s.path) for s in self.anomalies],
            "near_copy_similarity": self.near_copy_similarity,
            "near_copies": [str(s.path) for s in self.near_copies],
        }

    def trained_file_digests(self) -> list[str]:
        """Hashes of the files that trained or calibrated the model (good training and validation images, real
        training anomalies), kept in the checkpoint so that `test` leaves them out of a test set given elsewhere."""
        files = [s.path for s in self.train + self.val + self.anomalies if s.image is None]
        return sorted({file_digest(p) for p in files})

    def normals_record(self) -> dict:
        """Which good images trained and validated the model (kept in the checkpoint and metrics.json), and which
        were left out as other shots of test parts."""
        return {
            "train": len(self.train),
            "val": len(self.val),
            "train_images": self.train_limit,
            "unseen_parts": self.unseen_parts,
            "left_out_as_seen_parts": [str(s.path) for s in self.seen_parts],
        }


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def holds_images(folder: Path) -> bool:
    """Whether `folder` has image files directly in it (not only in subfolders)."""
    try:
        return folder.is_dir() and any(is_image_file(p) for p in folder.iterdir())
    except OSError:  # unreadable: not a folder of images we can use
        return False


def find_mask(mask_folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask", stem, f"{stem}_GT", f"{stem}_gt"):
        for suffix in IMAGE_SUFFIXES:
            candidate = mask_folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _split_validation(good: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded split of normal training images into (train, validation)."""
    if not 0 <= fraction < 1:
        raise DataError(f"data.val_fraction must be in [0, 1), got {fraction}")
    order = list(good)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * fraction)
    if fraction > 0 and len(order) >= 2:
        n_val = max(1, n_val)
    val, train = sorted(order[:n_val]), sorted(order[n_val:])
    if not train:
        raise DataError(f"only {len(good)} good training images: too few to hold out a validation split")
    return train, val


def _test_samples(root: Path, defect_dirs: list[Path], gt_root: Path | None) -> list[Sample]:
    samples = []
    for folder in defect_dirs:
        defect = folder.name
        for path in _images_in(folder):
            if defect == "good":
                samples.append(Sample(path, 0))
                continue
            mask = None
            if gt_root is not None:
                mask = find_mask(gt_root / defect, path.stem)
                if mask is None:
                    raise DataError(f"no mask for {path}: expected {gt_root / defect / (path.stem + '_mask.png')}")
            samples.append(Sample(path, 1, defect, mask))
    return samples


def category_folders(root: Path) -> list[str]:
    """The folders under an MVTec-layout root that hold train/, sorted; none for a missing or unreadable root."""
    try:
        return sorted(p.name for p in root.iterdir() if (p / "train").is_dir()) if root.is_dir() else []
    except OSError:  # an unreadable root or entry: nothing to list
        return []


def _categories_hint(root: Path, category: str) -> str:
    """What to write instead of a missing category: the closest category folder under root, or the layout."""
    found = category_folders(root)
    if not found:
        return LAYOUT_HELP
    close = difflib.get_close_matches(category, found, n=1)
    listed = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
    return (f"did you mean {close[0]}? " if close else "") + f"categories under {root}: {listed}"


def open_mvtec(cfg: DataConfig) -> CategoryData:
    if not cfg.root:
        raise DataError("no dataset given: pass --data ROOT --category NAME (MVTec AD layout, see README#datasets)")
    root = Path(cfg.root) / cfg.category if cfg.category else Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"category folder {root} does not exist; {_categories_hint(Path(cfg.root), cfg.category)}")
    good_dir = root / "train" / "good"
    if not holds_images(good_dir):
        good = next((d for d in sorted(root.iterdir()) if d.name.lower() in GOOD_NAMES and holds_images(d)), None)
        hint = f"to train on {good}'s images, give --data {good}" if good else LAYOUT_HELP
        raise DataError(f"no images found in {good_dir}: {hint}")
    train, val = _split_validation(_images_in(good_dir), cfg.val_fraction, cfg.split_seed)
    test_root = root / "test"
    defect_dirs = sorted(d for d in test_root.iterdir() if d.is_dir()) if test_root.is_dir() else []
    gt_root = root / "ground_truth"
    notes = []
    if not gt_root.is_dir():
        gt_root = None
        notes.append(f"no ground_truth folder in {root}: image-level metrics only")
    test = _test_samples(root, defect_dirs, gt_root)
    if not test:
        notes.append(f"no test images in {test_root}: training only")
    return CategoryData(
        name=cfg.category or root.name,
        train=[Sample(p, 0) for p in train],
        val=[Sample(p, 0) for p in val],
        test=test,
        has_masks=gt_root is not None,
        notes=notes,
    )


def dataset_root(cfg: DataConfig) -> Path:
    """data.root, which must exist; a relative one (e.g. a checkpoint's, used from another folder) says where from."""
    root = Path(cfg.root)
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (a relative path, read from {Path.cwd()}; --data gives another)"
        raise DataError(f"dataset root {root} does not exist{where}; {LAYOUT_HELP}")
    return root


def open_category(cfg: DataConfig, normals: bool = True) -> CategoryData:
    """Read the dataset `cfg` names; data.format `auto` detects the layout from the files present. `normals=False`
    skips what only shapes the good training images (data.unseen_parts, data.train_images), for callers that read
    the test split alone."""
    from defectmap.data.adapters import ADAPTERS, detect_format
    from defectmap.data.folders import open_folder

    if cfg.root and not cfg.good_dir:  # the `folder` format reads data.good_dir instead
        dataset_root(cfg)
    formats = {"mvtec": open_mvtec, "mpdd": open_mvtec, "folder": open_folder, **ADAPTERS}
    name = detect_format(cfg) if cfg.format == "auto" else cfg.format
    if name not in formats:
        raise DataError(f"unknown data.format '{cfg.format}'; available: auto, {', '.join(formats)}")
    category = formats[name](cfg)
    if cfg.anomalies:
        hold_out_anomalies(category, cfg.anomalies, cfg.anomaly_seed, cfg.anomaly_sampling)
        if cfg.near_copy_similarity:
            hold_out_near_copies(category, cfg.near_copy_similarity, cfg.max_pixels)
    if normals and cfg.unseen_parts:
        leave_out_seen_parts(category, cfg.unseen_parts, cfg.max_pixels)
    if normals and cfg.train_images:
        limit_training(category, cfg.train_images, cfg.split_seed)
    return category


def _sample_per_type(candidates: list[Sample], k: int, rng: random.Random) -> list[Sample]:
    """k samples taken round-robin over the defect types, so type counts differ by at most one."""
    by_type: dict[str, list[Sample]] = {}
    for sample in candidates:
        by_type.setdefault(sample.defect, []).append(sample)
    queues = [rng.sample(by_type[defect], len(by_type[defect])) for defect in sorted(by_type)]
    rng.shuffle(queues)  # which types get one more when k is not a multiple of their number
    chosen: list[Sample] = []
    while len(chosen) < k:
        for queue in queues:
            if queue and len(chosen) < k:
                chosen.append(queue.pop())
    return chosen


def hold_out_anomalies(category: CategoryData, k: int, seed: int, sampling: str = "uniform") -> None:
    """Move k seeded-random defective test images (with masks) to `category.anomalies`, out of the test set."""
    candidates = [s for s in category.test if s.label == 1 and s.mask_path is not None]
    if k < 0 or k > len(candidates):
        raise DataError(
            f"data.anomalies={k}, but {category.name} has {len(candidates)} defective test images with masks"
        )
    if sampling not in ("uniform", "per_type"):
        raise DataError(f"unknown data.anomaly_sampling '{sampling}'; use uniform or per_type")
    rng = random.Random(seed)
    drawn = rng.sample(candidates, k) if sampling == "uniform" else _sample_per_type(candidates, k, rng)
    chosen = {s.path for s in drawn}
    category.anomalies = [s for s in category.test if s.path in chosen]
    category.anomaly_seed, category.anomaly_sampling = seed, sampling
    category.test = [s for s in category.test if s.path not in chosen]
    category.notes.append(
        f"{k} real anomalies (seed {seed}, {sampling} sampling) used for training and removed from the test set"
    )


def hold_out_near_copies(category: CategoryData, threshold: float, max_pixels: int) -> None:
    """Move the test images that are near-copies of the training anomalies (another shot of the same part) out of
    the test set too, into `category.near_copies`."""
    from defectmap.data.near_copies import near_copies

    found = {s.path for s in near_copies(category.anomalies, category.test, threshold, max_pixels)}
    category.near_copies = [s for s in category.test if s.path in found]
    category.near_copy_similarity = threshold
    category.test = [s for s in category.test if s.path not in found]
    category.notes.append(
        f"{len(found)} test images that are near-copies of the training anomalies (similarity {threshold:g} or more) "
        "removed from the test set as well"
    )


def leave_out_seen_parts(category: CategoryData, threshold: float, max_pixels: int) -> None:
    """Move the good training and validation images that are near-copies of any test image (another shot of a
    tested part) out of training, into `category.seen_parts`."""
    from defectmap.data.near_copies import near_copies

    normals = category.train + category.val  # on a terminal, a bar: this compares every pair
    found = {s.path for s in near_copies(category.test, normals, threshold, max_pixels, progress=True)}
    had_val = bool(category.val)
    category.seen_parts = [s for s in normals if s.path in found]
    category.unseen_parts = threshold
    category.train = [s for s in category.train if s.path not in found]
    category.val = [s for s in category.val if s.path not in found]
    if not category.train or (had_val and not category.val):
        raise DataError(
            f"data.unseen_parts={threshold:g} leaves {len(category.train)} training and {len(category.val)} "
            "validation images: nearly every good image is another shot of a test part; raise the similarity"
        )
    category.notes.append(
        f"{len(found)} good training and validation images that are near-copies of test images (similarity "
        f"{threshold:g} or more) left out of training: the test shows parts the model never saw"
    )


def leave_out_trained_files(category: CategoryData, info: dict) -> None:
    """Leave out of the test set every file a checkpoint (`info`, as engine.load reads it) records as one that
    trained or calibrated it, under whatever name it has now: scores on those would flatter the model."""
    seen = set(info.get("trained_files", []))
    if not seen:  # a checkpoint from before they were recorded
        return
    kept = [s for s in category.test if s.image is not None or _digest_or_none(s.path) not in seen]
    if len(kept) < len(category.test):
        category.notes.append(f"{len(category.test) - len(kept)} test images that trained or calibrated the model "
                              "(the same files, as its checkpoint records) left out of the test set")  # fmt: skip
        category.test = kept


def _digest_or_none(path: Path) -> str | None:
    try:
        return file_digest(path)
    except OSError:  # unreadable: kept, and scoring says why it cannot be read
        return None


def limit_training(category: CategoryData, n: int, seed: int) -> None:
    """Keep n of the good training images, a seeded random draw (the validation images stay)."""
    if n > len(category.train):
        raise DataError(f"data.train_images={n}, but {category.name} has {len(category.train)} good training images")
    chosen = {s.path for s in random.Random(seed).sample(category.train, n)}
    category.train = [s for s in category.train if s.path in chosen]
    category.train_limit = n
    category.notes.append(f"{n} good training images used, drawn with seed {seed}")

"""Plain folders of images: the `folder` format (`data.good_dir`, or a `--data` folder that holds images itself) and
the test split `test --good DIR --defects DIR... --masks DIR` reads without any dataset layout.

Good images are split into train and validation (seeded). Test folders are searched recursively; every image under a
defect folder is defective, its defect type the name of the folder that holds it, and its mask is paired by name in
the mask folder, or in its subfolder of the same relative path or of that type's name (as MVTec's
`ground_truth/<type>/`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from defectmap.config import DataConfig
from defectmap.data.images import is_image_file
from defectmap.data.mvtec import (
    GOOD_NAMES,
    CategoryData,
    Sample,
    _images_in,
    _split_validation,
    find_mask,
    holds_images,
)
from defectmap.errors import DataError


def _images_under(folder: Path, skip: Path | None) -> list[Path]:
    """Image files in `folder` and its subfolders, sorted, none under the resolved folder `skip` (a mask folder kept
    inside it)."""
    files = sorted(p for p in folder.rglob("*") if is_image_file(p))
    return [p for p in files if skip is None or skip not in p.resolve().parents]


def _mask_of(path: Path, folder: Path, mask_root: Path) -> Path:
    """The mask of a defective image found under `folder`: by name in the mask folder's subfolder of the same
    relative path, in its subfolder of the defect type's name, or in the mask folder itself."""
    places = dict.fromkeys([mask_root / path.parent.relative_to(folder), mask_root / path.parent.name, mask_root])
    for place in places:
        if mask := find_mask(place, path.stem):
            return mask
    raise DataError(f"no mask for {path}: expected {path.stem}_mask.png in {' or '.join(map(str, places))}")


def folder_test_split(
    good: str, defects: Sequence[str], masks: str, names: tuple[str, str, str]
) -> tuple[list[Sample], list[str]]:
    """Test samples from folders of good images, of defective images and of their masks (each may be empty), and
    notes for the report. `names` are how the user gave the three (options or config keys), for the errors."""
    for name, value in [(names[0], good), *((names[1], d) for d in defects), (names[2], masks)]:
        if value and not Path(value).is_dir():
            raise DataError(f"{name}: folder {value} does not exist")
    mask_root = Path(masks) if masks else None
    skip = mask_root.resolve() if mask_root else None
    test = [Sample(p, 0) for p in _images_under(Path(good), skip)] if good else []
    for folder in map(Path, defects):
        for path in _images_under(folder, skip):
            if path.parent.name.lower() in GOOD_NAMES:
                raise DataError(f"{path.parent} is under {names[1]}, so its images would count as defective: "
                                f"give it with {names[0]}, or give the dataset root with --data")  # fmt: skip
            mask = _mask_of(path, folder, mask_root) if mask_root is not None else None
            test.append(Sample(path, 1, path.parent.name, mask))
    good_files = {s.path.resolve() for s in test if s.label == 0}
    if twice := [s.path for s in test if s.label == 1 and s.path.resolve() in good_files]:
        raise DataError(f"{twice[0]} is under both {names[0]} and {names[1]}: give folders that do not overlap")
    defective = any(s.label for s in test)
    notes = [f"no {names[2]}: image-level metrics only"] if defective and mask_root is None else []
    return test, notes


def open_folder(cfg: DataConfig) -> CategoryData:
    """`folder` format: good images from data.good_dir (or, auto-detected, from the --data folder itself), split into
    train and validation; optional test images from data.test_good_dir and data.defect_dir, masks from data.mask_dir.
    """
    if not cfg.good_dir and not cfg.root:
        raise DataError("format 'folder' needs --set data.good_dir=DIR (a folder of good images)")
    good_dir = Path(cfg.good_dir or cfg.root)
    if not holds_images(good_dir):
        raise DataError(f"no images found in {good_dir}: data.good_dir must hold good images")
    train, val = _split_validation(_images_in(good_dir), cfg.val_fraction, cfg.split_seed)
    defects = [cfg.defect_dir] if cfg.defect_dir else []
    keys = ("data.test_good_dir", "data.defect_dir", "data.mask_dir")
    test, notes = folder_test_split(cfg.test_good_dir, defects, cfg.mask_dir if defects else "", keys)
    if not test:
        notes.append("no test images (data.test_good_dir, data.defect_dir): training only")
    return CategoryData(
        name=cfg.category or good_dir.resolve().name,
        train=[Sample(p, 0) for p in train],
        val=[Sample(p, 0) for p in val],
        test=test,
        has_masks=bool(cfg.mask_dir) and bool(defects),
        notes=notes,
    )


def open_test_folders(name: str, good: str = "", defects: Sequence[str] = (), masks: str = "") -> CategoryData:
    """The test split of `defectmap test CKPT --good DIR --defects DIR... --masks DIR`: no training data is read."""
    test, notes = folder_test_split(good, defects, masks, ("--good", "--defects", "--masks"))
    if not test:
        raise DataError(f"no images (PNG, JPG, BMP, TIFF) found in {', '.join([good, *defects])}")
    return CategoryData(name, train=[], val=[], test=test, has_masks=bool(masks) and bool(defects), notes=notes)

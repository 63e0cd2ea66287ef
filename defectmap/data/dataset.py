"""A torch Dataset over `Sample`s: preprocessed images, masks at model size, original sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, default_collate

from defectmap.data.images import image_from_memory, load_image, load_mask
from defectmap.data.mvtec import Sample, find_mask
from defectmap.data.synthetic import (
    SYNTHETIC_KINDS,
    AnomalyMix,
    extended_anomaly,
    item_generator,
    load_textures,
    otsu_foreground,
    real_copy,
    synthesize,
)
from defectmap.data.transforms import preprocess, resize_mask, tile_boxes
from defectmap.errors import DataError
from defectmap.resume import epoch_order


def sample_image(sample: Sample, max_pixels: int) -> np.ndarray:
    """A sample's pixels as `load_image` gives them: read from its file, or from memory (`predict` on arrays)."""
    if sample.image is None:
        return load_image(sample.path, max_pixels)
    return image_from_memory(sample.image, max_pixels)


class ImageDataset(Dataset):
    """Items are dicts: image (3, S, S), mask (S, S), label, index, and size (H, W) of the original.

    With `skip_errors`, an unreadable image becomes {"index", "error"} instead of raising, and
    `collate` separates such items from the batch (batch prediction reports and skips them).
    """

    def __init__(
        self,
        samples: list[Sample],
        image_size: int,
        *,
        cache: bool = False,
        max_pixels: int = 100_000_000,
        skip_errors: bool = False,
        tile: int = 0,
        tile_overlap: int = 32,
        tile_score: str = "window",
    ):
        self.samples = samples
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.skip_errors = skip_errors
        self.tile, self.tile_overlap, self.tile_score = tile, tile_overlap, tile_score  # see DataConfig
        self._cache: dict[int, dict] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def source(self, index: int) -> int:
        """The sample an item comes from (itself; a `TileDataset` item: the image it is a tile of)."""
        return index

    def epoch_order(self, seed: int, epoch: int, batch_size: int = 1, workers: int = 0) -> list[int]:
        """Training's item order in epoch `epoch` (a `TileDataset` may group its tiles by image and by worker)."""
        return epoch_order(len(self), seed, epoch)

    def _load(self, index: int) -> dict:
        sample = self.samples[index]
        image = sample_image(sample, self.max_pixels)
        size = image.shape[:2]
        if self.tile:
            return tiled_item(image, self, sample.label, index)
        if sample.mask_path is not None:
            mask = resize_mask(load_mask(sample.mask_path, size, self.max_pixels), self.image_size)
        else:
            mask = torch.zeros(self.image_size, self.image_size)
        return {
            "image": preprocess(image, self.image_size),
            "mask": mask,
            "label": torch.tensor(sample.label),
            "index": torch.tensor(index),
            "size": torch.tensor(size),
        }

    def __getitem__(self, index: int) -> dict:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        try:
            item = self._load(index)
        except DataError as exc:
            if not self.skip_errors:
                raise
            return {"index": index, "error": str(exc)}
        if self._cache is not None:
            self._cache[index] = item
        return item


def tiled_item(image: np.ndarray, tiling: ImageDataset, label: int, index: int) -> dict:
    """An image as tiled scoring reads it: its windows at the original resolution, each resized to the model input."""
    boxes = tile_boxes(image.shape[0], image.shape[1], tiling.tile, tiling.tile_overlap)
    tiles = [preprocess(image[y0:y1, x0:x1], tiling.image_size) for y0, y1, x0, x1 in boxes]
    return {"tiles": torch.stack(tiles), "boxes": torch.tensor(boxes), "label": torch.tensor(label),
            "index": torch.tensor(index), "size": torch.tensor(image.shape[:2])}  # fmt: skip


def collate(items: list[dict]) -> tuple[dict | None, list[dict]]:
    """(batch of readable items or None, list of {"index", "error"} for unreadable ones)."""
    good = [item for item in items if "error" not in item]
    return (default_collate(good) if good else None), [item for item in items if "error" in item]


class AnomalyMixDataset(Dataset):
    """Normal items turned, with the shares of `mix`, into real, extended or synthetic anomalies.

    Every item draws from its own generator seeded by (seed, epoch, index), so an epoch is reproducible
    and resumable; `fixed=True` ignores the epoch (a validation set that never changes). Items keep the
    ImageDataset keys; `mask` marks the anomalous pixels and `label` is 1 when any pixel is marked. Without
    `mix.real_negatives`, every item also has `weight` (S, S): the pixels its loss counts, all of them except
    outside the mask of a real image shown as itself. With `mix.clean_target`, every item also has `clean`: the
    normal image before any anomaly was put in (what a reconstruction model is trained to rebuild).
    """

    def __init__(
        self,
        normals: ImageDataset,
        mix: AnomalyMix,
        seed: int,
        textures: list[torch.Tensor] | None = None,
        anomalies: ImageDataset | None = None,
        foregrounds: list[torch.Tensor | None] | None = None,
        fixed: bool = False,
    ):
        for kind in mix.synthetic_kinds:
            if kind not in SYNTHETIC_KINDS:
                raise DataError(f"unknown synthetic anomaly '{kind}'; available: {', '.join(SYNTHETIC_KINDS)}")
        if not mix.synthetic_kinds and (anomalies is None or mix.real_share < 1 - mix.normal_share):
            raise DataError("no synthetic anomaly kinds and not enough real anomalies to fill the training mix")
        self.normals, self.mix, self.seed = normals, mix, seed
        self.textures, self.anomalies, self.foregrounds = textures or [], anomalies, foregrounds
        # A defective image whose mask marks nothing (Magnetic Tile has a few) would train as a normal one.
        self.real_indices = [i for i in range(len(anomalies or [])) if anomalies[i]["mask"].any()]
        if anomalies is not None and mix.real_share > 0 and not self.real_indices:
            images = len(getattr(anomalies, "samples", anomalies))  # a dataset's images (not its tiles), or items
            raise DataError(
                f"none of the {images} real anomalies marks a defect pixel in its mask; "
                "draw others (data.anomaly_seed) or set model.real_share=0"
            )
        self.fixed = fixed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.normals)

    def __getitem__(self, index: int) -> dict:
        generator = item_generator(self.seed, 0 if self.fixed else self.epoch, index)
        item = dict(self.normals[index])
        if not self.mix.real_negatives:
            item["weight"] = torch.ones_like(item["mask"])
        image = item["image"]
        if self.mix.clean_target:
            item["clean"] = image
        draw = float(torch.rand((), generator=generator))
        if draw < self.mix.normal_share:
            return item
        if self.real_indices and draw < self.mix.normal_share + self.mix.real_share:
            pick = int(torch.randint(len(self.real_indices), (), generator=generator))
            real = self.anomalies[self.real_indices[pick]]
            if float(torch.rand((), generator=generator)) < self.mix.copy_share:  # the anomaly itself
                image, mask = real_copy(real["image"], real["mask"], generator, self.mix.copy_transform)
                if not self.mix.real_negatives:
                    item["weight"] = mask.float()
            else:
                foreground = self.foregrounds[index] if self.foregrounds else otsu_foreground(image)
                image, mask = extended_anomaly(image, real["image"], real["mask"], generator, foreground)
        else:
            kinds = self.mix.synthetic_kinds
            kind = kinds[int(torch.randint(len(kinds), (), generator=generator))]
            image, mask = synthesize(image, kind, generator, self.textures, self.mix.beta_max)
        item.update(image=image.float().contiguous(), mask=mask.float(), label=torch.tensor(int(mask.any())))
        return item


def synthetic_probe(normals: ImageDataset, texture_dir: str, seed: int) -> ConcatDataset:
    """Every validation normal twice: as it is (label 0) and with a synthetic anomaly fixed per seed (label 1).

    The anomaly-free stand-in for a labelled validation set: DAAD's automatic granularity and score fusion
    are chosen on it, never on real anomalies or test images.
    """
    textures = load_textures(texture_dir, normals.image_size) if texture_dir else []
    anomalous = AnomalyMixDataset(normals, AnomalyMix(0.0, 0.0), seed + 7, textures, fixed=True)
    return ConcatDataset([normals, anomalous])


def foreground_path(folder: str, sample: Sample) -> Path:
    """The foreground mask (`data.foreground_dir`) of a normal image, paired by name."""
    path = find_mask(Path(folder), sample.path.stem)
    if path is None:
        raise DataError(f"no foreground mask for {sample.path.name} in {folder}: expected {sample.path.stem}.png")
    return path


def load_foregrounds(folder: str, normals: ImageDataset) -> list[torch.Tensor]:
    """Foreground masks (where defects may be pasted) for every normal image, paired by name from `folder`."""
    masks = []
    for sample in normals.samples:
        size = normals[len(masks)]["size"].tolist()
        mask = load_mask(foreground_path(folder, sample), tuple(size), normals.max_pixels)
        masks.append(resize_mask(mask, normals.image_size))
    return masks

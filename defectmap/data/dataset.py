"""A torch Dataset over `Sample`s: preprocessed images, masks at model size, original sizes."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, default_collate

from defectmap.data.images import load_image, load_mask
from defectmap.data.mvtec import Sample
from defectmap.data.transforms import preprocess, resize_mask, tile_boxes
from defectmap.errors import DataError


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
    ):
        self.samples = samples
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.skip_errors = skip_errors
        self.tile, self.tile_overlap = tile, tile_overlap
        self._cache: dict[int, dict] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> dict:
        sample = self.samples[index]
        image = load_image(sample.path, self.max_pixels)
        size = image.shape[:2]
        if self.tile:  # tiles at the original resolution, each resized to the model input
            boxes = tile_boxes(size[0], size[1], self.tile, self.tile_overlap)
            tiles = [preprocess(image[y0:y1, x0:x1], self.image_size) for y0, y1, x0, x1 in boxes]
            return {"tiles": torch.stack(tiles), "boxes": torch.tensor(boxes), "label": torch.tensor(sample.label),
                    "index": torch.tensor(index), "size": torch.tensor(size)}  # fmt: skip
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


def collate(items: list[dict]) -> tuple[dict | None, list[dict]]:
    """(batch of readable items or None, list of {"index", "error"} for unreadable ones)."""
    good = [item for item in items if "error" not in item]
    return (default_collate(good) if good else None), [item for item in items if "error" in item]

"""Training on tiles (`data.tile`): every window that `test` and `predict` score, as a training item of its own.

Large images with small defects lose those defects when the whole image is resized to the model input. With
`data.tile`, scoring cuts overlapping tile x tile windows out of the original image (`tile_boxes`), resizes each
to the model input and stitches the maps. A model trained on whole images would then see parts at another scale
than it learned; `TileDataset` gives training the very same windows, so the model learns the scale it is used at.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from defectmap.config import DataConfig
from defectmap.data.dataset import ImageDataset, foreground_path, load_foregrounds, sample_image, tiled_item
from defectmap.data.images import load_mask
from defectmap.data.mvtec import Sample
from defectmap.data.synthetic import SYNTHETIC_KINDS, item_generator, load_textures, synthesize
from defectmap.data.transforms import preprocess, resize_mask, tile_boxes
from defectmap.progress import bars_off
from defectmap.resume import epoch_order


class TileDataset(Dataset):
    """Items in `ImageDataset`'s format (image, mask, label, index, size), one per tile of every image.

    Tiles are the windows scoring uses (`tile_boxes` with `tile_overlap`), each resized to `image_size`; `size` is
    the window's own (H, W) and `mask` the window of the image's mask (zero without one: normal images), so the
    tiles of a real anomaly that hold none of its defect are normal. Every image is decoded once here to learn its
    windows; with `cache` its tiles are kept (one preprocessed tile weighs as much as one whole image of an untiled
    dataset), else the last `pool` decoded images are: the in-order passes (validation, calibration, the
    granularity study) and training's `epoch_order` decode each image once.
    """

    POOL = 8  # decoded images kept without the cache (fewer if they would fill a 16th of the machine's memory)

    def __init__(
        self,
        samples: list[Sample],
        image_size: int,
        tile: int,
        tile_overlap: int,
        *,
        cache: bool = True,
        max_pixels: int = 100_000_000,
        progress: bool = False,
    ):
        self.samples, self.image_size, self.max_pixels = samples, image_size, max_pixels
        self.tile, self.tile_overlap = tile, tile_overlap
        self.windows: list[tuple[int, tuple[int, int, int, int]]] = []  # (sample index, (y0, y1, x0, x1))
        self.shapes: list[tuple[int, int]] = []  # every image's (H, W)
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if cache else None
        self._decoded: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()  # the last `pool`
        self.pool = self.POOL  # training shuffles the tiles of this many images together
        for index in tqdm(range(len(samples)), desc="cutting images into tiles", disable=bars_off(progress),
                          leave=False):  # fmt: skip
            image, mask = self._load(index)
            self.shapes.append(image.shape[:2])
            boxes = tile_boxes(image.shape[0], image.shape[1], tile, tile_overlap)
            if index == 0 and cache:
                _warn_if_large(len(samples) * len(boxes), image_size)
            elif index == 0 and _memory():
                self.pool = max(1, min(self.POOL, _memory() // 16 // image.nbytes))
            self.windows += [(index, box) for box in boxes]
            if self._cache is not None:
                self._cache += [self._cut(image, mask, box) for box in boxes]
        if self._cache is not None:
            self._decoded.clear()  # every tile is kept: the images themselves are not needed again

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """An image and its mask; the last `pool` read are kept."""
        if index in self._decoded:
            self._decoded.move_to_end(index)
            return self._decoded[index]
        sample = self.samples[index]
        image = sample_image(sample, self.max_pixels)
        mask = load_mask(sample.mask_path, image.shape[:2], self.max_pixels) if sample.mask_path else None
        self._decoded[index] = image, mask
        if len(self._decoded) > self.pool:
            self._decoded.popitem(last=False)
        return image, mask

    def _cut(self, image: np.ndarray, mask: np.ndarray | None, box) -> tuple[torch.Tensor, torch.Tensor]:
        y0, y1, x0, x1 = box
        size = self.image_size
        window = torch.zeros(size, size) if mask is None else resize_mask(mask[y0:y1, x0:x1], size)
        return preprocess(image[y0:y1, x0:x1], size), window

    def __len__(self) -> int:
        return len(self.windows)

    def source(self, index: int) -> int:
        """The sample (image) that item `index` is a tile of."""
        return self.windows[index][0]

    def epoch_order(self, seed: int, epoch: int, batch_size: int = 1, workers: int = 0) -> list[int]:
        """Training's item order: shuffled as any dataset's, or without the cache shuffled by pools of `pool`
        images, so that an epoch decodes each image once rather than once for every tile of it (with DataLoader
        `workers`, once in the worker its pool is dealt to)."""
        if self._cache is not None:
            return epoch_order(len(self), seed, epoch)
        images = [image for image, _ in self.windows]
        return epoch_order(len(self), seed, epoch, images, self.pool, batch_size, workers)

    def __getitem__(self, index: int) -> dict:
        sample_index, box = self.windows[index]
        sample = self.samples[sample_index]
        image, mask = self._cache[index] if self._cache is not None else self._cut(*self._load(sample_index), box)
        y0, y1, x0, x1 = box
        return {
            "image": image,
            "mask": mask,
            # a tile is defective where it holds defect pixels (without a mask: where its image is defective)
            "label": torch.tensor(int(bool(mask.any())) if sample.mask_path else sample.label),
            "index": torch.tensor(index),
            "size": torch.tensor((y1 - y0, x1 - x0)),
        }


def _mib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def _memory() -> int:
    """This machine's memory in bytes (0 where it cannot be read)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0


def _warn_if_large(tiles: int, image_size: int) -> None:
    """Kept tiles that would fill more than a quarter of this machine's memory (estimated from the first image)."""
    need = tiles * 3 * image_size * image_size * 4  # float32 pixels (masks are small beside them)
    total = _memory()
    if total and need > total / 4:
        warnings.warn(
            f"keeping about {tiles} tiles in memory needs about {_mib(need)} of this machine's {_mib(total)}: "
            "set data.cache=false (slower: every epoch decodes each image again), a larger "
            "data.tile or a smaller data.image_size",
            stacklevel=4,
        )


def dataset_as_trained(samples: list[Sample], data: DataConfig, *, cache: bool, progress: bool = False) -> Dataset:
    """Images as training sees them (to train, validate or probe on): whole, or with `data.tile` their tiles."""
    if data.tile:
        return TileDataset(samples, data.image_size, data.tile, data.tile_overlap, cache=cache,
                           max_pixels=data.max_pixels, progress=progress)  # fmt: skip
    return ImageDataset(samples, data.image_size, cache=cache, max_pixels=data.max_pixels)


def foregrounds_as_trained(folder: str, normals: Dataset) -> list[torch.Tensor]:
    """Foreground masks (`data.foreground_dir`, paired by name) for every item of `normals`, as training sees it:
    whole, or for a `TileDataset` each tile's window of its image's mask (a tile of background gets an empty one,
    and a defect pasted onto it may then land anywhere in it, as on a whole image without foreground)."""
    if not isinstance(normals, TileDataset):
        return load_foregrounds(folder, normals)
    masks, whole = [], (-1, None)  # (sample index, its mask at the image's size)
    for index, (y0, y1, x0, x1) in normals.windows:
        if whole[0] != index:  # tiles come image by image: each mask is read once
            path = foreground_path(folder, normals.samples[index])
            whole = (index, load_mask(path, normals.shapes[index], normals.max_pixels))
        masks.append(resize_mask(whole[1][y0:y1, x0:x1], normals.image_size).bool())  # a byte a pixel: many tiles
    return masks


class TiledProbe(ImageDataset):
    """Whole validation normals scored as tiles, each twice: as it is (label 0), and with one synthetic anomaly in a
    tile-sized window at a random place (label 1), fixed per seed.

    The anomaly is drawn at the window's original resolution, so it is the size a defect in one training tile is, and
    it lies across the windows scoring cuts as a real defect does. `data.tile_score=auto` chooses on it.
    """

    def __init__(self, samples: list[Sample], data: DataConfig, seed: int):
        super().__init__(samples, data.image_size, max_pixels=data.max_pixels, tile=data.tile,
                         tile_overlap=data.tile_overlap)  # fmt: skip
        self.textures = load_textures(data.texture_dir, data.image_size) if data.texture_dir else []
        self.seed = seed

    def __len__(self) -> int:
        return 2 * len(self.samples)

    def _load(self, index: int) -> dict:
        normals = len(self.samples)
        image = sample_image(self.samples[index % normals], self.max_pixels)
        if index < normals:
            return tiled_item(image, self, 0, index)
        generator = item_generator(self.seed, index)
        height, width = image.shape[:2]
        tile_h, tile_w = min(self.tile, height), min(self.tile, width)
        y0, x0, pick = (int(torch.randint(n, (), generator=generator)) for n in
                        (height - tile_h + 1, width - tile_w + 1, len(SYNTHETIC_KINDS)))  # fmt: skip
        window = torch.from_numpy(np.ascontiguousarray(image[y0 : y0 + tile_h, x0 : x0 + tile_w])).permute(2, 0, 1)
        kind = SYNTHETIC_KINDS[pick]
        window, _ = synthesize(window, kind, generator, self.textures)
        image = image.copy()
        image[y0 : y0 + tile_h, x0 : x0 + tile_w] = window.permute(1, 2, 0).numpy()
        return tiled_item(image, self, 1, index)

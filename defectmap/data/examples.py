"""`defectmap synth`: write examples of the anomalies a model trains on, so users can look at them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from defectmap.config import DataConfig
from defectmap.data.dataset import AnomalyMixDataset
from defectmap.data.mvtec import open_category
from defectmap.data.synthetic import SYNTHETIC_KINDS, AnomalyMix, load_textures
from defectmap.data.tiles import dataset_as_trained, foregrounds_as_trained
from defectmap.errors import DataError
from defectmap.progress import bars_off


def _png(array: torch.Tensor, path: Path) -> None:
    pixels = (array.clamp(0, 1) * 255).round().to(torch.uint8)
    image = pixels.permute(1, 2, 0).numpy() if pixels.ndim == 3 else pixels.numpy()
    Image.fromarray(np.ascontiguousarray(image)).save(path)


def write_synthetic_examples(
    data: DataConfig, out_dir: str | Path, count: int = 16, seed: int = 0,
    kinds: tuple[str, ...] = SYNTHETIC_KINDS, progress: bool = True, mix: AnomalyMix | None = None,
) -> list[Path]:  # fmt: skip
    """`count` panels (normal | anomalous | mask, grey where the loss ignores pixels) in `out_dir`; with
    data.anomalies, half use the real ones.

    `mix` carries the training settings the panels follow (blending, how real anomalies are shown); its
    shares are replaced: every panel is anomalous, half real when there are real anomalies.
    """
    if count < 1:
        raise DataError(f"-n must be at least 1, got {count}")
    category = open_category(data)
    # With data.tile, the tiles training cuts (read once to learn them), spread over the training images.
    normals = dataset_as_trained(category.train, data, cache=False)
    textures = load_textures(data.texture_dir, data.image_size) if data.texture_dir else []
    anomalies = dataset_as_trained(category.anomalies, data, cache=True) if category.anomalies else None
    step = max(1, len(normals) // count) if data.tile else 1
    mix = replace(mix or AnomalyMix(), normal_share=0.0, real_share=0.5 if anomalies else 0.0, synthetic_kinds=kinds)
    foregrounds = foregrounds_as_trained(data.foreground_dir, normals) if anomalies and data.foreground_dir else None
    examples = AnomalyMixDataset(normals, mix, seed, textures, anomalies, foregrounds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in tqdm(range(count), desc="synthesising", disable=bars_off(progress)):
        index = i * step % len(normals)
        examples.epoch = i * step // len(normals)
        item = examples[index]
        mask = item["mask"]
        if "weight" in item:  # model.real_negatives=false: grey where the loss does not look
            mask = torch.where(item["weight"] > 0, mask, torch.full_like(mask, 0.5))
        mask = mask[None].expand(3, -1, -1)
        panel = torch.cat([normals[index]["image"], item["image"], mask], dim=2)
        path = out / f"{i:03d}_{category.train[normals.source(index)].path.stem}.png"
        _png(panel, path)
        paths.append(path)
    return paths

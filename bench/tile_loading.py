"""Reading tiles without the cache (`data.cache=false`): one training epoch's data loading in a plain shuffle
(each tile decodes its image) against `TileDataset.epoch_order` (images in pools, each decoded once an epoch).

Data loading only (no model), the same TileDataset, one epoch each, in the same run:

    python bench/tile_loading.py --data runs/tiles/data --category large_fabric --tile 128 --out runs/tile_loading.json

`--workers N` also reads the pooled order through a DataLoader with no worker and with N worker processes (batches of
16), counting the decodes in every process: each worker keeps its own pool, so training deals the pools out among
the workers (`epoch_order(..., workers=N)`); the same order without that dealing is measured beside it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch.utils.data import DataLoader  # noqa: E402

from defectmap.config import build_config  # noqa: E402
from defectmap.data import tiles as tiles_module  # noqa: E402
from defectmap.data.mvtec import open_category  # noqa: E402
from defectmap.data.tiles import TileDataset  # noqa: E402
from defectmap.resume import epoch_order  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--size", type=int, default=128, help="model input (data.image_size)")
    parser.add_argument("--workers", type=int, default=0, help="also load through a DataLoader with this many workers")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sets = [f"data.image_size={args.size}", f"data.tile={args.tile}"]
    data = build_config("ae", None, sets, root=args.data, category=args.category).data
    samples = open_category(data).train
    tiles = TileDataset(samples, data.image_size, data.tile, data.tile_overlap, cache=False, max_pixels=data.max_pixels)
    decodes = multiprocessing.Value("i", 0)  # shared with forked DataLoader workers
    real = tiles_module.sample_image

    def counted(sample, limit):
        with decodes.get_lock():
            decodes.value += 1
        return real(sample, limit)

    tiles_module.sample_image = counted
    runs = {"plain shuffle": (epoch_order(len(tiles), 0, 0), None), "pooled by image": (tiles.epoch_order(0, 0), None)}
    if args.workers:  # the order training uses with data.num_workers, and the one-process order in workers' hands
        runs["pooled, DataLoader, no worker"] = (tiles.epoch_order(0, 0), 0)
        runs[f"pooled, DataLoader, {args.workers} workers, pools not dealt out"] = (
            tiles.epoch_order(0, 0),
            args.workers,
        )
        runs[f"pooled, DataLoader, {args.workers} workers"] = (tiles.epoch_order(0, 0, 16, args.workers), args.workers)
    rows = {}
    for name, (order, workers) in runs.items():
        tiles._decoded.clear()
        decodes.value = 0
        start = time.perf_counter()
        if workers is None:
            for index in order:
                tiles[index]
        else:
            for _ in DataLoader(tiles, batch_size=16, sampler=order, num_workers=workers):
                pass
        rows[name] = {"seconds": time.perf_counter() - start, "decodes": decodes.value}
        print(f"{name}: {rows[name]['seconds']:.1f} s, {decodes.value} images decoded for {len(tiles)} tiles "
              f"of {len(samples)} images", flush=True)  # fmt: skip
    ratio = rows["plain shuffle"]["seconds"] / rows["pooled by image"]["seconds"]
    print(f"pooled by image: {ratio:.1f}x faster")
    if args.out:
        result = {"sets": sets, "category": args.category, "tiles": len(tiles), "images": len(samples), **rows,
                  "speedup": ratio}  # fmt: skip
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

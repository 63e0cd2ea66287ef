"""How much of a defect HEE erases: the share of defect and of background pixels that it sets to zero.

    python bench/hee_zeroed.py RUN/model.ckpt [RUN2/model.ckpt ...] --out bench/results/hee_zeroed.json

For each reconstruction checkpoint (ae, daad, pmb), the defective test images' difference maps (the model's error,
before any filter) go through Histogram Error Estimation; pixels of the ground-truth masks and the other pixels of
those images are counted where HEE leaves zero. A diagnostic for why HEE helps on one dataset and not another.
"""

import argparse
import json

import torch

from defectmap import engine
from defectmap.data.dataset import ImageDataset
from defectmap.data.mvtec import open_category
from defectmap.models.hee import histogram_error_estimation


@torch.no_grad()
def zeroed(path: str) -> dict:
    detector = engine.load(path, device="cpu")
    cfg = detector.config
    defective = [s for s in open_category(cfg.data).test if s.label == 1]
    counts = {"defect": [0, 0], "background": [0, 0]}  # zeroed, all
    for batch in torch.utils.data.DataLoader(ImageDataset(defective, cfg.data.image_size), batch_size=16):
        errors = histogram_error_estimation(detector.model.difference(batch["image"]), cfg.postprocess.hee_bins,
                                            cfg.postprocess.hee_edge)  # fmt: skip
        mask = batch["mask"] > 0.5
        for name, where in (("defect", mask), ("background", ~mask)):
            counts[name][0] += ((errors == 0) & where).sum().item()
            counts[name][1] += where.sum().item()
    return {"checkpoint": path, "method": cfg.method, **{f"{k}_pixels_zeroed": z / n for k, (z, n) in counts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for path in args.checkpoints:
        rows.append(zeroed(path))
        print(json.dumps(rows[-1]), flush=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

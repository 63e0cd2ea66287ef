"""Do reconstruction models rebuild the defects? The premise of memory autoencoders, measured on test images.

    python bench/rebuild.py RUN/model.ckpt [...] [--ring 9] [--out bench/results/rebuild.json]

DAAD and PMB rest on one premise: a plain autoencoder generalises well enough to rebuild anomalies too, so
their error stays low, and memory modules stop that. For each checkpoint (ae, daad or pmb) this scores the
test split at the model's input size with the raw reconstruction (no smoothing or post-processing) and
reports:

- the mean squared error on good images, on the defect-free pixels of defective images and on defect pixels;
- the defect transfer: how much of a defect's contrast the reconstruction keeps. A defect's contrast is the
  mean grey value inside its mask minus the mean in a ring around it (the mask dilated by `--ring` pixels);
  the transfer is the least-squares slope of the reconstruction's contrast on the input's over all defective
  images with a marked defect: 1 rebuilds defects as they are, 0 removes them;
- for memory models, how many memory items a query reads from in effect (exp of the addressing entropy),
  per memory level in the order the decoder reads them.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from defectmap import engine
from defectmap.data.dataset import ImageDataset
from defectmap.data.mvtec import open_category
from defectmap.models.memory import query_entropy


def contrast(grey: torch.Tensor, inside: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """(B,) mean grey value inside each mask minus the mean in its ring."""
    return (grey * inside).sum((1, 2)) / inside.sum((1, 2)) - (grey * ring).sum((1, 2)) / ring.sum((1, 2)).clamp(min=1)


@torch.no_grad()
def rebuild(checkpoint: str, ring_px: int) -> dict:
    detector = engine.load(checkpoint)
    model, cfg = detector.model, detector.config
    if not hasattr(model, "reconstruct"):
        raise SystemExit(f"{checkpoint} is a {cfg.method} model; this script needs a reconstruction model")
    dataset = ImageDataset(open_category(cfg.data).test, cfg.data.image_size)
    sums = {"good": [0.0, 0], "background": [0.0, 0], "defect": [0.0, 0]}
    c_in, c_out, items_read = [], [], {}
    for batch in torch.utils.data.DataLoader(dataset, batch_size=cfg.train.eval_batch_size):
        images = batch["image"].to(detector.device)
        recon = model.reconstruct(images)
        if isinstance(recon, tuple):  # daad and pmb also return the addressing weights of each memory level
            recon, weights = recon
            for level, w in enumerate(weights):  # exp(entropy) per query: how many items it reads, in effect
                items_read.setdefault(level, []).append(torch.exp(query_entropy(w)).flatten().cpu())
        error = (images - recon).pow(2).mean(1).cpu()
        masks, good = batch["mask"] > 0.5, batch["label"] == 0
        for name, where in (("good", good[:, None, None].expand_as(masks)), ("defect", masks),
                            ("background", ~masks & ~good[:, None, None])):  # fmt: skip
            sums[name][0] += float(error[where].sum())
            sums[name][1] += int(where.sum())
        marked = masks.flatten(1).any(1)
        if marked.any():
            inside = masks[marked].float()
            dilated = F.max_pool2d(inside[:, None], 2 * ring_px + 1, stride=1, padding=ring_px)[:, 0]
            ring = dilated - inside
            c_in.append(contrast(images.mean(1).cpu()[marked], inside, ring))
            c_out.append(contrast(recon.mean(1).cpu()[marked], inside, ring))
    c_in, c_out = torch.cat(c_in), torch.cat(c_out)
    error = {name: total / max(count, 1) for name, (total, count) in sums.items()}
    return {
        "checkpoint": checkpoint,
        "method": cfg.method,
        "error_good": error["good"],
        "error_background": error["background"],
        "error_defect": error["defect"],
        "defect_to_good_error": error["defect"] / error["good"],
        "defect_transfer": float((c_in * c_out).sum() / (c_in * c_in).sum()),
        "defective_images_with_mask": len(c_in),
        "items_read_per_query": [float(torch.cat(v).mean()) for _, v in sorted(items_read.items())],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--ring", type=int, default=9, help="ring width around each defect, in model pixels")
    parser.add_argument("--out", default="bench/results/rebuild.json")
    args = parser.parse_args()
    rows = []
    for checkpoint in args.checkpoints:
        row = rebuild(checkpoint, args.ring)
        rows.append(row)
        print(
            f"{checkpoint}: error good {row['error_good']:.5f}, background {row['error_background']:.5f}, "
            f"defect {row['error_defect']:.5f} (x{row['defect_to_good_error']:.2f}); "
            f"defect transfer {row['defect_transfer']:.3f}; items read per query "
            f"{[round(v, 1) for v in row['items_read_per_query']]}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

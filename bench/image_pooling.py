"""PRN's image AUROC under other poolings of the same maps: the mean of the top k pixels for several k.

    python bench/image_pooling.py RUN/model.ckpt [...] [--set data.anomaly_sampling=per_type] \
        [--top-k 1,25,100,400] [--out bench/results/image_pooling.json]

PRN's image score is the mean of the top-100 pixel probabilities of a 256^2 map (k scales with the map's
area). A model whose maps are sharper, as few-shot PRN's are, puts fewer pixels high on a small defect, so
a large k may dilute it where a small k would not. This script scores the test split once per checkpoint
and reads every k from the same maps, so only the pooling differs, overall and per defect type (each type
against all good images). `--top-k 1` is the maximum of the map, the metric's default image score. It is a
diagnostic: the model's own score (`model.top_k`) is what every table reports. `--set` names a few-shot
hold-out as in bench/holdout.py.
"""

import argparse
import json
import sys
from math import inf
from pathlib import Path

import torch
from holdout import hold_out_overrides, on_hold_out

from defectmap import engine, metrics
from defectmap.models.prn import top_k_score


class PooledScores(torch.nn.Module):
    """The wrapped model, recording the image score of every batch under each k."""

    def __init__(self, model: torch.nn.Module, ks: list[int]):
        super().__init__()
        self.model, self.ks, self.scores = model, ks, []

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        size = self.model.cfg.top_k_size
        self.scores.append(torch.stack([top_k_score(out.anomaly_map, k, size) for k in self.ks], 1).cpu())
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE")
    parser.add_argument("--top-k", default="1,25,100,400", help="comma-separated k, each for a 256^2 map")
    parser.add_argument("--out", default="bench/results/image_pooling.json")
    args = parser.parse_args()
    overrides = hold_out_overrides(parser, args.set)
    ks = [int(k) for k in args.top_k.split(",")]
    rows = []
    for checkpoint in args.checkpoints:
        detector, category = on_hold_out(checkpoint, overrides)
        if detector.config.method != "prn":
            parser.error(f"{checkpoint} is a {detector.config.method} model; this script re-pools PRN's maps")
        detector.model = pooled = PooledScores(detector.model, ks)
        labels = engine.test_outputs(detector, category, progress=False)["labels"]  # the shared inference path
        scores = torch.cat(pooled.scores).numpy()
        aurocs = {k: metrics.image_auroc(labels, scores[:, i]) for i, k in enumerate(ks)}
        defects = [s.defect for s in category.test]
        per_type = {
            k: {d: v["image_auroc"] for d, v in metrics.per_defect_type(labels, scores[:, i], defects, inf).items()}
            for i, k in enumerate(ks)
        }
        rows.append({"checkpoint": checkpoint, "model_top_k": detector.config.model.top_k, "image_auroc": aurocs,
                     "image_auroc_per_type": per_type})  # fmt: skip
        print(f"{checkpoint}: " + "  ".join(f"k={k} {a:.4f}" for k, a in aurocs.items()))
        for defect in per_type[ks[0]]:
            print(f"  {defect:10s} " + "  ".join(f"k={k} {per_type[k][defect]:.4f}" for k in ks))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", *sys.argv])
    Path(args.out).write_text(json.dumps({"command": command, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

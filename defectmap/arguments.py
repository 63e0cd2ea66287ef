"""The `defectmap` command's grammar: its subcommands, their arguments and what each is for.

`defectmap.cli` runs the subcommand named by `args.command`; a test checks that every command and option has help.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import __version__ as torch_version

from defectmap import __version__
from defectmap.export import FORMATS
from defectmap.models import MODELS

DEVICE_HELP = "auto (a GPU when there is one) | cpu | cuda | cuda:N"
TILE_HELP = "score overlapping tiles of this many pixels (0: whole images; default: the tiling the model trained on)"
MODEL_HELP = "model.ckpt (or its run folder), or an exported model.onnx / model.ts"


def model_file(text: str) -> str:
    """A checkpoint argument: a run folder stands for the model.ckpt in it."""
    path = Path(text)
    return str(path / "model.ckpt") if path.is_dir() and (path / "model.ckpt").is_file() else text


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="defectmap", description="Anomaly detection and defect maps for images.")
    main.add_argument("--version", action="version", version=f"defectmap {__version__} (torch {torch_version})")
    sub = main.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--quiet", action="store_true", help="no progress bars (terminal only) or progress lines")

    p = sub.add_parser("train", help="train a model on the good images of one category")
    p.add_argument("--model", choices=list(MODELS), default=None, help="method (default: the preset's, else ae)")
    p.add_argument("--data", help="dataset root (MVTec AD or another layout), or a folder of good images")
    p.add_argument("--category", help="category folder under --data")
    p.add_argument("--out", required=True, help="run folder for model.ckpt, last.ckpt and history.json")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out from last.ckpt")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    p.add_argument("--devices", type=int, default=1,
                   help="data-parallel processes on this machine (via torchrun; on CUDA one per GPU)")  # fmt: skip
    p.add_argument("--config", help="YAML preset with data:, train:, model: sections")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=5")
    common(p)

    p = sub.add_parser("test", help="evaluate a checkpoint on its test split; writes metrics.json")
    p.add_argument("checkpoint", type=model_file, help=MODEL_HELP)
    p.add_argument("--data", help="dataset root, its layout detected (default: the one it was trained on)")
    p.add_argument("--category", help="category folder under --data (default: the one it was trained on)")
    p.add_argument("--good", help="instead of a dataset: a folder of good test images (searched recursively)")
    p.add_argument("--defects", nargs="+", default=[],
                   help="instead of a dataset: folders of defective test images (subfolder = defect type)")  # fmt: skip
    p.add_argument("--masks", help="with --defects: their masks, by name (<stem>_mask.png, or in a subfolder per type)")
    p.add_argument("--out", help="folder for metrics.json (default: the checkpoint's folder)")
    p.add_argument("--tile", type=int, help=TILE_HELP)
    p.add_argument("--report", action="store_true", help="also write report.html (curves, histograms, gallery)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    common(p)

    p = sub.add_parser("predict", help="score images; writes scores.csv, regions.csv and an anomaly-map PNG per image")
    p.add_argument("checkpoint", type=model_file, help=MODEL_HELP)
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="folder for scores.csv, regions.csv, errors.csv, maps/ and masks/")
    p.add_argument("--resume", action="store_true", help="skip images already in OUT/scores.csv or errors.csv")
    p.add_argument("--devices", type=int, default=1,
                   help="shard the images over this many processes (torchrun; on CUDA one per GPU)")  # fmt: skip
    p.add_argument("--tile", type=int, help=TILE_HELP)
    p.add_argument("--overlay", action="store_true", help="also OUT/overlays/: each image, predicted defects outlined")
    p.add_argument("--min-area", type=int, default=1,
                   help="leave predicted defect regions smaller than this many pixels out of regions.csv")  # fmt: skip
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    common(p)

    p = sub.add_parser("watch", help="score images as they arrive in a folder, into the files predict writes")
    p.add_argument("checkpoint", type=model_file, help=MODEL_HELP)
    p.add_argument("folder", help="the folder new images arrive in (searched recursively)")
    p.add_argument("--out", required=True, help="folder for scores.csv ... as predict; its rows are kept")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between looks at an idle folder")
    p.add_argument("--settle", type=float, default=0.5, help="read an image once its last write is this old (s)")
    p.add_argument("--tile", type=int, help=TILE_HELP)
    p.add_argument("--overlay", action="store_true", help="also OUT/overlays/: each image, predicted defects outlined")
    p.add_argument("--min-area", type=int, default=1, help="leave regions under this many pixels out of regions.csv")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    common(p)

    p = sub.add_parser("threshold", help="re-calibrate a checkpoint's threshold without retraining")
    p.add_argument("checkpoint", type=model_file, help="a model.ckpt or its run folder (updated in place)")
    p.add_argument("--fpr", type=float, default=0.01, help="share of good validation images allowed above it")
    p.add_argument("--defects", help="a folder of defective validation images (not test images): use max F1")
    p.add_argument("--good", help="a folder of good images to calibrate on instead of the validation split")
    p.add_argument("--tile", type=int, help="set it for images scored as tiles of this many pixels (0: whole images); "
                                            "test and predict then score so")  # fmt: skip
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    common(p)

    p = sub.add_parser("export", help="export a checkpoint as ONNX or TorchScript (config and threshold inside)")
    p.add_argument("checkpoint", type=model_file, help="a model.ckpt or its run folder")
    p.add_argument("--format", choices=FORMATS, help="default: the one --out's suffix names")
    p.add_argument("--out", required=True, help="output file: model.onnx (ONNX) or model.ts (TorchScript)")

    p = sub.add_parser("serve", help="HTTP service: POST /predict, GET /health, GET /model")
    p.add_argument("checkpoint", type=model_file, help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--max-bytes", type=int, default=20 * 1024 * 1024, help="largest accepted request body")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest accepted decoded image")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds allowed for one inference")

    p = sub.add_parser("report", help="write DIR/report.html of a training run or of predict's or watch's output")
    p.add_argument("run_dir", metavar="DIR", help="the --out folder of train (metrics, curves, gallery) or of "
                   "predict or watch (decisions, scores in order, highest and borderline images)")  # fmt: skip
    common(p)

    p = sub.add_parser("benchmark", help="train and test a grid of models x categories x seeds (resumable)")
    p.add_argument("--models", required=True, help="comma-separated models or .yaml variants: ae,daad,V.yaml")
    p.add_argument("--data", required=True, help="dataset root (MVTec AD layout)")
    p.add_argument("--categories", default="all", help="comma-separated, or all (every folder with train/)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--out", required=True, help="folder for results.md/.json, runs.csv and OUT/CATEGORY/MODEL/seedN")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every run")
    p.add_argument("--split-per-seed", action="store_true",
                   help="each seed also draws its own validation images (data.split_seed)")  # fmt: skip
    common(p)

    p = sub.add_parser("granularity", help="DAAD's granularity study: errors and AUROC per memory block size")
    p.add_argument("--data", help="dataset root")
    p.add_argument("--category", help="category folder under --data")
    p.add_argument("--out", required=True, help="folder for granularity.json/.md/.png and one run per scale and seed")
    p.add_argument("--scales", default="1,2,4,8,16", help="block scales s: memory level l gets max(1, s // 2**l)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per scale (mean and std in the table)")
    p.add_argument("--config", help="a daad preset, e.g. model.adversarial: false")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every run")
    p.add_argument("--checkpoints", nargs="+", help="score these DAAD checkpoints instead of training (no --data)")
    common(p)

    p = sub.add_parser("demo", help="generate the built-in fabric data, train the AE baseline, print metrics")
    p.add_argument("--out", default="defectmap-demo", help="folder for the generated data and the run")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=5")
    common(p)

    p = sub.add_parser("synth", help="write examples of synthetic (and few-shot real) training anomalies")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--category", help="category folder under --data")
    p.add_argument("--out", required=True, help="folder for the example PNG panels")
    p.add_argument("-n", type=int, default=16, help="number of examples")
    p.add_argument("--kinds", help="comma-separated synthetic kinds (default: model.synthetic_kinds, all three)")
    p.add_argument("--textures", help="texture folder for perlin anomalies (e.g. DTD); default: procedural")
    p.add_argument("--seed", type=int, default=0, help="seed of the examples")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. data.anomalies=10")
    common(p)

    p = sub.add_parser("info", help="what a checkpoint or exported model is: method, training, threshold, versions")
    p.add_argument("checkpoint", type=model_file, help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print every record and setting as JSON")

    sub.add_parser("models", help="list the available methods")

    p = sub.add_parser("config", help="print the default configuration of a method as YAML")
    p.add_argument("--model", choices=list(MODELS), default="ae", help="method (default: ae)")
    return main

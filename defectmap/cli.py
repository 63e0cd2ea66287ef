"""The `defectmap` command: argparse subcommands, each a few lines calling the library.

Errors the user can fix are printed as one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from importlib import resources
from pathlib import Path

from torch import __version__ as torch_version

from defectmap import __version__, distributed, engine, outputs, training, watch
from defectmap.checkpoint import load_checkpoint, update_calibration
from defectmap.config import build_config, check_values, commented_yaml, resolve_config
from defectmap.data.demo import write_demo_dataset
from defectmap.data.mvtec import open_category
from defectmap.errors import DefectmapError
from defectmap.export import FORMATS, export
from defectmap.models import MODELS
from defectmap.resume import StopSignals


def _program() -> str:
    """How this command was called, for the next commands it suggests: `.venv/bin/defectmap` after `make demo`."""
    return sys.argv[0] if Path(sys.argv[0]).name == "defectmap" else "defectmap"


def cmd_train(args: argparse.Namespace) -> int | None:
    held = [name for name in ("model.ckpt", "last.ckpt") if (Path(args.out) / name).exists()]
    if held and not (args.resume or args.overwrite or "WORLD_SIZE" in os.environ):  # torchrun's processes: checked
        raise DefectmapError(
            f"{args.out} already holds a run ({held[0]}): continue it with --resume, replace it with --overwrite, "
            "or give another --out"
        )
    cfg = None  # --resume uses the run's own config, saved in last.ckpt, as it was
    if not args.resume:
        cfg = build_config(args.model, args.config, args.set, root=args.data, category=args.category)
    if args.devices > 1 and "WORLD_SIZE" not in os.environ:
        device = engine.resolve_device(cfg.train.device) if cfg else None
        return distributed.launch(args.devices, sys.argv[1:], device)
    checkpoint = training.fit(cfg, args.out, progress=not args.quiet, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        history = json.loads(
            (Path(args.out) / "history.json").read_text()
        )  # what the checkpoint holds, without its weights
        best = min(history, key=lambda epoch: epoch["val_loss"])
        minutes, seconds = divmod(round(history[-1]["seconds"]), 60)
        epochs = f"{len(history)} epoch{'s' * (len(history) != 1)}"
        weights = "averaged weights" if best.get("averaged_weights") else "weights"  # absent before train.ema_decay
        print(f"saved {checkpoint}: {epochs} in {minutes} min {seconds} s; the {weights} of epoch "
              f"{best['epoch']}, the lowest validation loss ({best['val_loss']:.5g})")  # fmt: skip
        print(f"next: {_program()} test {checkpoint}, or {_program()} predict {checkpoint} IMAGES --out DIR")
    return None


def _set_tile(detector: engine.Detector, tile: int | None) -> None:
    """`--tile` given: score tiles of that size (checked as `--set data.tile` would be)."""
    if tile is not None:
        detector.config.data.tile = tile
        check_values(detector.config)


def cmd_test(args: argparse.Namespace) -> None:
    detector = engine.load(args.checkpoint, device=args.device)
    _set_tile(detector, args.tile)
    data_cfg = detector.config.data
    data_cfg.root = args.data or data_cfg.root
    data_cfg.category = args.category or data_cfg.category
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    if args.report:
        from defectmap.report import write_report

        page, report = write_report(detector, open_category(data_cfg, normals=False), out, progress=not args.quiet)
        print(f"wrote {page}")
    else:
        report = engine.evaluate(detector, open_category(data_cfg, normals=False), progress=not args.quiet)
    path = outputs.write_metrics(report, out)
    print(outputs.format_table(report))
    print(f"wrote {path}")


def _check_min_area(min_area: int) -> None:
    if min_area < 1:
        raise DefectmapError(f"--min-area must be at least 1 pixel, got {min_area}")


def cmd_predict(args: argparse.Namespace) -> int | None:
    requested = engine.resolve_device(args.device)
    _check_min_area(args.min_area)
    if args.devices > 1 and "WORLD_SIZE" not in os.environ:
        return distributed.launch(args.devices, sys.argv[1:], requested)
    found = outputs.collect_images(args.paths, skip=Path(args.out))
    rank, world = distributed.setup(requested)  # under torchrun: each process on its own GPU
    detector = engine.load(args.checkpoint, device=str(distributed.local_device(rank, requested)))
    _set_tile(detector, args.tile)
    out = Path(args.out)
    if world > 1:  # whole batches go round-robin to the processes; rank 0 merges in the original order
        if args.resume:
            raise DefectmapError("--resume is for single-process prediction; run it without torchrun/--devices")
        size = detector.config.train.eval_batch_size
        batches = [found[i : i + size] for i in range(0, len(found), size)]
        mine = [item for batch in batches[rank::world] for item in batch]
        outputs.predict_to_folder(detector, mine, out / ".parts" / f"rank{rank}", progress=False,
                                  overlays=args.overlay, min_area=args.min_area)  # fmt: skip
        distributed.barrier()
        if rank == 0:  # the totals over every process; the others print nothing
            count, skipped = outputs.merge_parts(found, out, [out / ".parts" / f"rank{r}" for r in range(world)])
        distributed.teardown()
        if rank != 0:
            return None
    else:
        count, skipped = outputs.predict_to_folder(
            detector,
            found,
            out,
            resume=args.resume,
            progress=not args.quiet,
            overlays=args.overlay,
            min_area=args.min_area,
        )
    print(f"scored {count} image{'s' * (count != 1)}: {out / 'scores.csv'}")
    counts = outputs.decision_counts(out / "scores.csv")
    print(f"decisions in it: {counts['defect']} defect, {counts['good']} good")
    if skipped:
        print(f"skipped {skipped} unreadable image{'s' * (skipped != 1)}: {out / 'errors.csv'}", file=sys.stderr)
    return 1 if skipped and not count else None  # nothing could be scored: a script must not read it as success


def cmd_watch(args: argparse.Namespace) -> None:
    _check_min_area(args.min_area)
    watch.check_arguments(args.folder, args.out, args.interval, args.settle)  # before the model is loaded
    detector = engine.load(args.checkpoint, device=args.device)
    _set_tile(detector, args.tile)
    print(f"watching {args.folder} for new images, rows to {Path(args.out) / 'scores.csv'}; Ctrl-C stops", flush=True)
    show = None if args.quiet else lambda row, regions: print(watch.row_line(row, regions), flush=True)
    with StopSignals() as signals:
        scored, skipped = watch.watch_folder(detector, args.folder, args.out, stop=lambda: bool(signals.received),
                                             interval=args.interval, settle=args.settle, overlays=args.overlay,
                                             min_area=args.min_area, on_row=show)  # fmt: skip
    print(f"stopped by {signals.received}: scored {scored} image{'s' * (scored != 1)}, {skipped} unreadable")


def cmd_threshold(args: argparse.Namespace) -> None:
    load_checkpoint(args.checkpoint)  # an exported model is refused here, before any scoring
    detector = engine.load(args.checkpoint, device=args.device)
    defects = [sample for sample, _ in outputs.collect_images([args.defects])] if args.defects else None
    good = [sample for sample, _ in outputs.collect_images([args.good])] if args.good else None
    calibration = engine.recalibrate(detector, args.fpr, defects, progress=not args.quiet, good=good)
    update_calibration(args.checkpoint, calibration)
    print(f"threshold {calibration['threshold']:.6g} ({calibration['threshold_rule']}) saved in {args.checkpoint}")


def cmd_export(args: argparse.Namespace) -> None:
    detector = engine.load(args.checkpoint, device="cpu")
    path = export(detector, args.out, args.format)
    print(f"exported {path} (checked: it gives the model's scores and maps on random images, within 1e-4)")


def cmd_serve(args: argparse.Namespace) -> None:
    from defectmap.serve import ServiceLimits, inference_thread, serve

    executor = inference_thread()  # loads the model and runs every inference: one OpenMP team (serve.py)
    detector = executor.submit(engine.load, args.checkpoint, device=args.device).result()
    limits = ServiceLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, timeout_s=args.timeout)
    serve(detector, args.host, args.port, limits, executor)


def cmd_report(args: argparse.Namespace) -> None:
    from defectmap.prediction_report import write_prediction_report
    from defectmap.report import report_run

    folder = Path(args.run_dir)
    predictions = (folder / "scores.csv").is_file() and not (folder / "model.ckpt").is_file()
    print(f"wrote {write_prediction_report(folder) if predictions else report_run(folder, progress=not args.quiet)}")


def cmd_benchmark(args: argparse.Namespace) -> None:
    from defectmap.benchmark import run_benchmark

    run_benchmark(args.models, args.data, args.categories, args.seeds, args.out, args.set, not args.quiet)
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {Path(args.out) / 'results.md'}, results.json, runs.csv")


def cmd_granularity(args: argparse.Namespace) -> None:
    from defectmap import granularity_study as study

    if args.checkpoints:
        rows = study.score_checkpoints(args.checkpoints, args.out, not args.quiet)
    elif args.data and args.category:
        scales = study.parse_scales(args.scales)
        rows = study.run_study(args.data, args.category, args.out, scales, args.seeds, args.config, args.set,
                               not args.quiet)  # fmt: skip
    else:
        raise DefectmapError("give --data and --category to train the study, or --checkpoints to score DAAD runs")
    study.finish(rows, args.out)


def cmd_demo(args: argparse.Namespace) -> None:
    out = Path(args.out)
    root = write_demo_dataset(out / "data", seed=args.seed).parent
    preset = resources.files("defectmap") / "presets" / "demo.yaml"
    cfg = build_config(None, str(preset), args.set, root=str(root), category="fabric")
    checkpoint = training.fit(cfg, out / "run", progress=not args.quiet)
    detector = engine.load(checkpoint)
    report = engine.evaluate(detector, open_category(detector.config.data, normals=False), progress=not args.quiet)
    outputs.write_metrics(report, out / "run")
    print(outputs.format_table(report))
    print(f"checkpoint and metrics.json in {out / 'run'}")
    print(f"next, maps and outlined defects: {_program()} predict {checkpoint} {root / 'fabric' / 'test'} --out "
          f"{out / 'predictions'} --overlay")  # fmt: skip


def cmd_synth(args: argparse.Namespace) -> None:
    from defectmap.data.examples import write_synthetic_examples
    from defectmap.models.prn import anomaly_mix

    # PRN's settings (--set model.beta_max=..., model.real_copy_transform=...): it is the model that trains on these.
    cfg = build_config("prn", None, args.set, root=args.data, category=args.category, texture_dir=args.textures)
    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else cfg.model.synthetic_kinds
    mix = anomaly_mix(cfg.model)
    paths = write_synthetic_examples(cfg.data, args.out, args.n, args.seed, kinds, not args.quiet, mix)
    print(f"wrote {len(paths)} panels (normal | anomalous | mask) to {args.out}")


def cmd_models(args: argparse.Namespace) -> None:
    for name, cls in MODELS.items():
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        print(f"{name:<6} {doc[0] if doc else cls.__name__}")


def cmd_config(args: argparse.Namespace) -> None:
    print(commented_yaml(resolve_config({}, args.model)), end="")


DEVICE_HELP = "auto (a GPU when there is one) | cpu | cuda | cuda:N"


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="defectmap", description="Anomaly detection and defect maps for images.")
    main.add_argument("--version", action="version", version=f"defectmap {__version__} (torch {torch_version})")
    sub = main.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--quiet", action="store_true", help="no progress bars (terminal only) or progress lines")

    p = sub.add_parser("train", help="train a model on the good images of one category")
    p.add_argument("--model", choices=list(MODELS), default=None, help="method (default: the preset's, else ae)")
    p.add_argument("--data", help="dataset root (MVTec AD layout: ROOT/CATEGORY/train/good ...)")
    p.add_argument("--category", help="category folder under --data")
    p.add_argument("--out", required=True, help="run folder for model.ckpt, last.ckpt and history.json")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out from last.ckpt")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    p.add_argument("--devices", type=int, default=1,
                   help="data-parallel processes on this machine (via torchrun; on CUDA one per GPU)")  # fmt: skip
    p.add_argument("--config", help="YAML preset with data:, train:, model: sections")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=5")
    common(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("test", help="evaluate a checkpoint on its test split; writes metrics.json")
    p.add_argument("checkpoint", help="model.ckpt, or an exported model.onnx / model.ts")
    p.add_argument("--data", help="dataset root (default: the one it was trained on)")
    p.add_argument("--category", help="category folder under --data (default: the one it was trained on)")
    p.add_argument("--out", help="folder for metrics.json (default: the checkpoint's folder)")
    p.add_argument("--tile", type=int, help="score large images as overlapping tiles of this many pixels")
    p.add_argument("--report", action="store_true", help="also write report.html (curves, histograms, gallery)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    common(p)
    p.set_defaults(handler=cmd_test)

    p = sub.add_parser("predict", help="score images; writes scores.csv, regions.csv and an anomaly-map PNG per image")
    p.add_argument("checkpoint", help="model.ckpt, or an exported model.onnx / model.ts")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="folder for scores.csv, regions.csv, errors.csv, maps/ and masks/")
    p.add_argument("--resume", action="store_true", help="skip images already in OUT/scores.csv or errors.csv")
    p.add_argument("--devices", type=int, default=1,
                   help="shard the images over this many processes (torchrun; on CUDA one per GPU)")  # fmt: skip
    p.add_argument("--tile", type=int, help="score large images as overlapping tiles of this many pixels")
    p.add_argument("--overlay", action="store_true", help="also OUT/overlays/: each image, predicted defects outlined")
    p.add_argument("--min-area", type=int, default=1,
                   help="leave predicted defect regions smaller than this many pixels out of regions.csv")  # fmt: skip
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    common(p)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("watch", help="score images as they arrive in a folder, into the files predict writes")
    p.add_argument("checkpoint", help="model.ckpt, or an exported model.onnx / model.ts")
    p.add_argument("folder", help="the folder new images arrive in (searched recursively)")
    p.add_argument("--out", required=True, help="folder for scores.csv ... as predict; its rows are kept")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between looks at an idle folder")
    p.add_argument("--settle", type=float, default=0.5, help="read an image once its last write is this old (s)")
    p.add_argument("--tile", type=int, help="score large images as overlapping tiles of this many pixels")
    p.add_argument("--overlay", action="store_true", help="also OUT/overlays/: each image, predicted defects outlined")
    p.add_argument("--min-area", type=int, default=1, help="leave regions under this many pixels out of regions.csv")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    common(p)
    p.set_defaults(handler=cmd_watch)

    p = sub.add_parser("threshold", help="re-calibrate a checkpoint's threshold without retraining")
    p.add_argument("checkpoint", help="a model.ckpt (updated in place)")
    p.add_argument("--fpr", type=float, default=0.01, help="share of good validation images allowed above it")
    p.add_argument("--defects", help="a folder of defective validation images (not test images): use max F1")
    p.add_argument("--good", help="a folder of good images to calibrate on instead of the validation split")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    common(p)
    p.set_defaults(handler=cmd_threshold)

    p = sub.add_parser("export", help="export a checkpoint as ONNX or TorchScript (config and threshold inside)")
    p.add_argument("checkpoint", help="a model.ckpt")
    p.add_argument("--format", choices=FORMATS, help="default: the one --out's suffix names")
    p.add_argument("--out", required=True, help="output file: model.onnx (ONNX) or model.ts (TorchScript)")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("serve", help="HTTP service: POST /predict, GET /health, GET /model")
    p.add_argument("checkpoint", help="model.ckpt, or an exported model.onnx / model.ts")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--max-bytes", type=int, default=20 * 1024 * 1024, help="largest accepted request body")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest accepted decoded image")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds allowed for one inference")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("report", help="write DIR/report.html of a training run or of predict's or watch's output")
    p.add_argument("run_dir", metavar="DIR", help="the --out folder of train (metrics, curves, gallery) or of "
                   "predict or watch (decisions, scores in order, highest and borderline images)")  # fmt: skip
    common(p)
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("benchmark", help="train and test a grid of models x categories x seeds (resumable)")
    p.add_argument("--models", required=True, help="comma-separated models or .yaml variants: ae,daad,V.yaml")
    p.add_argument("--data", required=True, help="dataset root (MVTec AD layout)")
    p.add_argument("--categories", default="all", help="comma-separated, or all (every folder with train/)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--out", required=True, help="folder for results.md/.json, runs.csv and OUT/CATEGORY/MODEL/seedN")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every run")
    common(p)
    p.set_defaults(handler=cmd_benchmark)

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
    p.set_defaults(handler=cmd_granularity)

    p = sub.add_parser("demo", help="generate the built-in fabric data, train the AE baseline, print metrics")
    p.add_argument("--out", default="defectmap-demo", help="folder for the generated data and the run")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=5")
    common(p)
    p.set_defaults(handler=cmd_demo)

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
    p.set_defaults(handler=cmd_synth)

    p = sub.add_parser("models", help="list the available methods")
    p.set_defaults(handler=cmd_models)

    p = sub.add_parser("config", help="print the default configuration of a method as YAML")
    p.add_argument("--model", choices=list(MODELS), default="ae", help="method (default: ae)")
    p.set_defaults(handler=cmd_config)
    return main


def _one_line(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line: one line in the style of its errors, not Python's file:line and source."""
    return f"defectmap: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    python_format, warnings.formatwarning = warnings.formatwarning, _one_line  # restored below
    try:
        code = args.handler(args)
        if code:
            return code
    except DefectmapError as exc:
        print(f"defectmap: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("defectmap: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # e.g. a map PNG on a full disk; atomic writes already report their own
        where = f" {exc.filename}" if exc.filename else ""
        print(f"defectmap: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = python_format
    return 0


if __name__ == "__main__":
    sys.exit(main())

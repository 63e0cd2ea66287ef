"""The `defectmap` command: one handler per subcommand, each a few lines calling the library.

The subcommands and their arguments are in `defectmap.arguments`; `HANDLERS` maps each to its handler.

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

from defectmap import distributed, engine, outputs, training, watch
from defectmap.arguments import parser
from defectmap.calibration import recalibrate
from defectmap.checkpoint import load_checkpoint, update_calibration
from defectmap.config import build_config, check_values, commented_yaml, resolve_config
from defectmap.data.adapters import detect_format
from defectmap.data.demo import write_demo_dataset
from defectmap.data.folders import open_test_folders
from defectmap.data.mvtec import CategoryData, open_category
from defectmap.describe import (
    describe,
    describe_lines,
    kept_epoch,
    method_title,
    run_length,
    threshold_rule,
    validations,
)
from defectmap.errors import DataError, DefectmapError
from defectmap.export import export
from defectmap.models import MODELS
from defectmap.resume import StopSignals
from defectmap.text import plural
from defectmap.threshold import calibration_outlook, promised_rates


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
        best, measure, value = kept_epoch(history)
        extreme = "lowest" if measure == "validation loss" else "highest"
        weights = "averaged weights" if best.get("averaged_weights") else "weights"  # absent before train.ema_decay
        length = run_length(len(history), history[-1].get("step"), history[-1]["seconds"], validations(history))
        print(f"saved {checkpoint}: {length}; the {weights} of epoch "
              f"{best['epoch']}, the {extreme} {measure} ({value:.5g})")  # fmt: skip
        data = cfg.data if cfg else None  # a resumed run's dataset is in its checkpoint
        untested = data and detect_format(data) == "folder" and not (data.test_good_dir or data.defect_dir)
        test = f"{_program()} test {checkpoint}" + (" --good DIR --defects DIR" if untested else "")
        print(f"next: {test}, or {_program()} predict {checkpoint} IMAGES --out DIR")
    return None


def _set_tile(detector: engine.Detector, tile: int | None) -> None:
    """`--tile` given: score tiles of that size (checked as `--set data.tile` would be)."""
    if tile is not None:
        detector.config.data.tile = tile
        check_values(detector.config)


def _test_split(detector: engine.Detector, args: argparse.Namespace) -> CategoryData:
    """What `test` evaluates: the checkpoint's dataset, another one (--data, its layout detected afresh), or plain
    folders (--good, --defects, --masks); without the images the checkpoint records it trained or calibrated on."""
    data_cfg = detector.config.data
    if args.masks and not args.defects:
        raise DefectmapError("--masks goes with --defects: the folders of defective images they mark")
    if args.good or args.defects:
        if args.data or args.category:
            raise DefectmapError("give either --data/--category or --good/--defects, not both")
        name = detector.info.get("category") or data_cfg.category or Path(args.good or args.defects[0]).name
        category = open_test_folders(name, args.good or "", args.defects, args.masks or "")
    else:
        if args.data:  # another dataset: its own layout, not the folders or format the model was trained with
            for key in ("good_dir", "test_good_dir", "defect_dir", "mask_dir"):
                setattr(data_cfg, key, "")
            data_cfg.format, data_cfg.root = "auto", args.data
        data_cfg.category = args.category or data_cfg.category
        category = open_category(data_cfg, normals=False)
    given = len(category.test)
    category = engine.test_split(detector, category)
    if not category.test:
        why = f" (all {given} trained or calibrated the model)" if given else ""
        raise DataError(f"{category.name} has no test images{why}: give them with --good DIR and --defects DIR "
                        "[--masks DIR], or a dataset with --data ROOT")  # fmt: skip
    return category


def cmd_test(args: argparse.Namespace) -> None:
    detector = engine.load(args.checkpoint, device=args.device)
    _set_tile(detector, args.tile)
    category = _test_split(detector, args)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    if args.report:
        from defectmap.report import write_report

        page, report = write_report(detector, category, out, progress=not args.quiet)
        print(f"wrote {page}")
    else:
        report = engine.evaluate(detector, category, progress=not args.quiet)
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
    print(f"scored {plural(count, 'image')}: {out / 'scores.csv'}")
    counts = outputs.decision_counts(out / "scores.csv")
    print(f"decisions in it: {counts['defect']} defect, {counts['good']} good{_promise(detector.calibration)}")
    if skipped:
        print(f"skipped {plural(skipped, 'unreadable image')}: {out / 'errors.csv'}", file=sys.stderr)
    return 1 if skipped and not count else None  # nothing could be scored: a script must not read it as success


def _promise(calibration: dict) -> str:
    """`; the threshold's 76 good images promise about 1.3% of good parts rejected, at most 3.9%`, where known."""
    outlook = calibration_outlook(calibration)
    if outlook is None:
        return ""
    n = calibration["val_images"]
    return f"; the threshold's {plural(n, 'good image')} promise{'s' * (n == 1)} {promised_rates(outlook)}"


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
    print(f"stopped by {signals.received}: scored {plural(scored, 'image')}, {skipped} unreadable")


def cmd_threshold(args: argparse.Namespace) -> None:
    load_checkpoint(args.checkpoint)  # an exported model is refused here, before any scoring
    detector = engine.load(args.checkpoint, device=args.device)
    _set_tile(detector, args.tile)
    defects = [sample for sample, _ in outputs.collect_images([args.defects])] if args.defects else None
    good = [sample for sample, _ in outputs.collect_images([args.good])] if args.good else None
    calibration = recalibrate(detector, args.fpr, defects, progress=not args.quiet, good=good)
    update_calibration(args.checkpoint, calibration)
    print(f"threshold {calibration['threshold']:.6g} ({threshold_rule(calibration)}) saved in "
          f"{args.checkpoint}{_promise(calibration)}")  # fmt: skip


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

    run_benchmark(args.models, args.data, args.categories, args.seeds, args.out, args.set, not args.quiet,
                  args.split_per_seed)  # fmt: skip
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
    report = engine.evaluate(detector, engine.test_split(detector), progress=not args.quiet)
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
    for name in MODELS:
        print(f"{name:<6} {method_title(name)}")


def cmd_info(args: argparse.Namespace) -> None:
    detector = engine.load(args.checkpoint, device="cpu")
    record = {"file": args.checkpoint, "bytes": Path(args.checkpoint).stat().st_size, **describe(detector)}
    print(json.dumps(record, indent=1) if args.json else "\n".join([f"{args.checkpoint}:", *describe_lines(record)]))


def cmd_config(args: argparse.Namespace) -> None:
    print(commented_yaml(resolve_config({}, args.model)), end="")


HANDLERS = {
    "train": cmd_train,
    "test": cmd_test,
    "predict": cmd_predict,
    "watch": cmd_watch,
    "threshold": cmd_threshold,
    "export": cmd_export,
    "serve": cmd_serve,
    "report": cmd_report,
    "benchmark": cmd_benchmark,
    "granularity": cmd_granularity,
    "demo": cmd_demo,
    "synth": cmd_synth,
    "models": cmd_models,
    "info": cmd_info,
    "config": cmd_config,
}


def _one_line(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line: one line in the style of its errors, not Python's file:line and source."""
    return f"defectmap: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    python_format, warnings.formatwarning = warnings.formatwarning, _one_line  # restored below
    try:
        code = HANDLERS[args.command](args)
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

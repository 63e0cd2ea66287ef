"""The benchmark runner writes its tables and skips finished runs when run again."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from defectmap import MODELS, training
from defectmap.cli import main
from defectmap.config import build_config
from defectmap.data.mvtec import open_category
from defectmap.engine import build_model, load

SETS = ["--set", "data.image_size=32", "--set", "train.epochs=1", "--set", "train.device=cpu",
        "--set", "data.val_fraction=0.25"]  # fmt: skip


def no_training(*a, **k):
    raise AssertionError("a finished run was trained again")


def test_benchmark_grid_tables_and_resume(tiny_dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    args = ["benchmark", "--models", "ae", "--data", str(tiny_dataset), "--categories", "all", "--seeds", "2",
            "--out", str(out), "--quiet", *SETS, "--set", "model.channels=[8,16]"]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    [row] = results["rows"]
    assert row["category"] == "tiny" and row["model"] == "ae" and row["seeds"] == 2
    call = results["call"]  # what produced the tables, and with which versions
    assert (call["models"], call["data"], call["categories"], call["seeds"]) == ("ae", str(tiny_dataset), "all", 2)
    assert call["split_per_seed"] is False  # both seeds validate on data.split_seed's draw
    assert call["sets"] == [a for a in args[args.index("--quiet") + 1 :] if a != "--set"]
    assert results["versions"]["torch"] and results["versions"]["defectmap"]
    assert 0 <= row["image_auroc"] <= 1 and row["train_seconds"] > 0 and row["inference_images_per_s"] > 0
    assert (out / "runs.csv").read_text().count("\n") == 3
    assert "| ae | 2 |" in (out / "results.md").read_text() and "### tiny" in capsys.readouterr().out
    first = (out / "results.json").read_text()

    monkeypatch.setattr(training, "fit", no_training)
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(first)["rows"]


def test_split_per_seed_draws_each_seeds_validation_images(tiny_dataset, tmp_path):
    out = tmp_path / "bench"
    args = ["benchmark", "--models", "ae", "--data", str(tiny_dataset), "--seeds", "2", "--out", str(out), "--quiet",
            *SETS, "--set", "model.channels=[8,16]", "--split-per-seed"]  # fmt: skip
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["call"]["split_per_seed"] is True
    validation = []
    for seed in (0, 1):
        cfg = load(out / "tiny" / "ae" / f"seed{seed}" / "model.ckpt").config
        assert cfg.data.split_seed == cfg.train.seed == seed
        validation.append({s.path for s in open_category(cfg.data).val})
    assert validation[0] != validation[1]


def test_grid_reports_each_run_and_its_epochs(tiny_dataset, tmp_path, capsys):
    # Without --quiet, a long grid is not silent: each run's epochs, then one line per run with its scores.
    args = ["benchmark", "--models", "ae", "--data", str(tiny_dataset), "--seeds", "1", "--out", str(tmp_path / "b"),
            *SETS, "--set", "model.channels=[8,16]"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "epoch 1: train loss" in out
    assert "calibrating on the" in out and "\r" not in captured.err  # bars only on a terminal (test_cli)
    [line] = [line for line in out.splitlines() if line.startswith("tiny / ae / seed 0: ")]
    assert "image_auroc 0." in line or "image_auroc 1." in line
    assert main(args) == 0
    assert "tiny / ae / seed 0: finished earlier, read from its metrics.json" in capsys.readouterr().out


def test_interrupted_run_continues_from_last_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    args = ["benchmark", "--models", "ae", "--data", str(tiny_dataset), "--seeds", "1", "--out", str(out), "--quiet",
            *SETS, "--set", "model.channels=[8,16]", "--set", "train.epochs=2"]  # fmt: skip
    real_fit, real_save, calls, saves = training.fit, training.save_training_state, [], []

    def recording_fit(cfg, out_dir, progress=True, resume=False):
        calls.append(resume)
        return real_fit(cfg, out_dir, progress=progress, resume=resume)

    def save_then_die(*args, **kwargs):  # the process is killed right after the first epoch is saved
        real_save(*args, **kwargs)
        saves.append(args[-1].epoch)
        if args[-1].epoch == 1 and len(saves) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "fit", recording_fit)
    monkeypatch.setattr(training, "save_training_state", save_then_die)
    assert main(args) == 130 and not (out / "tiny" / "ae" / "seed0" / "metrics.json").exists()
    assert main(args) == 0
    assert calls == [False, True]
    history = json.loads((out / "tiny" / "ae" / "seed0" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    [run] = json.loads((out / "results.json").read_text())["runs"]
    assert run["train_seconds"] >= history[-1]["seconds"]  # both attempts' training time


def test_stopped_grid_keeps_the_tables_of_finished_runs(tiny_dataset, tmp_path, monkeypatch):
    out, preset = tmp_path / "bench", tmp_path / "narrow.yaml"
    preset.write_text("method: ae\nmodel:\n  latent_channels: 4\n")
    args = ["benchmark", "--models", f"ae,{preset}", "--data", str(tiny_dataset), "--seeds", "2", "--out", str(out),
            "--quiet", *SETS, "--set", "model.channels=[8,16]"]  # fmt: skip
    real_fit = training.fit

    def second_run_dies(cfg, out_dir, **kwargs):
        if cfg.train.seed == 1:
            raise KeyboardInterrupt
        return real_fit(cfg, out_dir, **kwargs)

    monkeypatch.setattr(training, "fit", second_run_dies)
    assert main(args) == 130
    rows = json.loads((out / "results.json").read_text())["rows"]  # seed 0 of both models finished first
    assert [(r["model"], r["seeds"]) for r in rows] == [("ae", 1), ("narrow", 1)]
    assert "| ae | 1 |" in (out / "results.md").read_text()


def test_unknown_model_is_one_line(tmp_path, capsys):
    assert main(["benchmark", "--models", "ae,nope", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err


def test_no_seeds_is_one_line_and_writes_nothing(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["benchmark", "--models", "ae", "--data", str(tiny_dataset), "--seeds", "0", "--out", str(out)]) == 2
    assert "--seeds must be at least 1, got 0" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("categories", ["all", "tiny"])
def test_categories(tiny_dataset, categories):
    from defectmap.benchmark import list_categories

    assert list_categories(tiny_dataset, categories) == ["tiny"]


def test_preset_variants_are_labelled_by_file_stem(tiny_dataset, tmp_path):
    variant = tmp_path / "ae_small.yaml"
    variant.write_text("method: ae\nmodel:\n  channels: [4, 8]\n  latent_channels: 2\n")
    out = tmp_path / "bench"
    args = ["benchmark", "--models", f"ae,{variant}", "--data", str(tiny_dataset), "--seeds", "2", "--out", str(out),
            "--quiet", *SETS, "--set", "model.smoothing_sigma=1.0"]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert {row["model"] for row in results["rows"]} == {"ae", "ae_small"}
    # The later model against the first, seed by seed, from the runs' own figures.
    [against] = results["against_first"]
    assert (against["model"], against["reference"], against["seeds"]) == ("ae_small", "ae", [0, 1])
    by = {(r["variant"], r["seed"]): r["image_auroc"] for r in results["runs"]}
    expected = [round(100 * (by["ae_small", s] - by["ae", s]), 1) for s in (0, 1)]
    assert against["image_auroc"]["per_seed"] == expected
    assert "Against ae, paired by seed" in (out / "results.md").read_text()
    model = json.loads((out / "tiny" / "ae_small" / "seed0" / "metrics.json").read_text())["model"]
    assert model["channels"] == [4, 8] and model["smoothing_sigma"] == 1.0  # the preset, then --set


@pytest.mark.parametrize(("text", "message"), [("method: nope\n", "must name its model"), (None, "does not exist")])
def test_bad_variant_preset_is_one_line(tmp_path, capsys, text, message):
    preset = tmp_path / "variant.yaml"
    if text is not None:
        preset.write_text(text)
    assert main(["benchmark", "--models", str(preset), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


ABLATIONS = sorted(Path(__file__).parents[1].glob("bench/ablations/*.yaml"))


@pytest.mark.parametrize("preset", ABLATIONS, ids=lambda p: p.stem)
def test_shipped_ablation_presets_build_their_models(preset):
    # The README's ablation commands pass these files to `benchmark`; a misspelt key or value must fail here.
    cfg = build_config(None, str(preset), [])
    model = build_model(cfg)
    assert cfg.method in MODELS and isinstance(model, MODELS[cfg.method])
    overrides = yaml.safe_load(preset.read_text())["model"]
    assert all(getattr(cfg.model, key) == (tuple(v) if isinstance(v, list) else v) for key, v in overrides.items())


def test_run_trained_outside_the_benchmark_is_labelled_by_its_folder(tiny_dataset, tmp_path, monkeypatch):
    # `defectmap train` + `test` write metrics.json without a variant or seed; moved into a benchmark folder,
    # the run is reused (not trained again) and summarised under the folder's label and seed.
    out, run = tmp_path / "bench", tmp_path / "bench" / "tiny" / "ae" / "seed0"
    sets = [*SETS, "--set", "model.channels=[8,16]", "--set", "train.seed=0"]
    assert main(["train", "--model", "ae", "--data", str(tiny_dataset), "--category", "tiny", "--out", str(run),
                 "--quiet", *sets]) == 0  # fmt: skip
    assert main(["test", str(run / "model.ckpt"), "--quiet"]) == 0
    assert not {"variant", "seed"} & set(json.loads((run / "metrics.json").read_text()))

    monkeypatch.setattr(training, "fit", no_training)
    args = ["benchmark", "--models", "ae", "--data", str(tiny_dataset), "--seeds", "1", "--out", str(out), "--quiet",
            *SETS]  # fmt: skip
    assert main(args) == 0
    [row] = json.loads((out / "results.json").read_text())["rows"]
    assert row["model"] == "ae" and row["seeds"] == 1
    assert (out / "runs.csv").read_text().splitlines()[1].startswith("tiny,ae,0,")


def test_compare_script_pairs_seeds_and_applies_the_two_std_bar(tmp_path):
    # bench/compare.py: runs.csv rows and a holdout.py file, differences matched by seed, in points.
    columns = "category,model,seed,image_auroc,pixel_auroc,aupro,pixel_ap\n"
    runs = tmp_path / "runs.csv"
    runs.write_text(columns + "".join(f"c,k-10,{s},{0.95 + s / 1000},0.8,0.7,0.5\n" for s in (2, 0, 1)))
    holdout = tmp_path / "holdout.json"
    holdout.write_text(json.dumps([
        {"image_auroc": v, "pixel_auroc": 0.8, "aupro": 0.72, "pixel_ap": 0.3, "training_anomalies": {"seed": s}}
        for s, v in ((0, 0.90), (1, 0.91), (2, 0.90))
    ]))  # fmt: skip
    out = tmp_path / "cmp.json"
    script = Path(__file__).resolve().parents[1] / "bench" / "compare.py"
    args = [sys.executable, str(script), str(runs), "--rows", f"k0={holdout}", "--pairs", "k-10-k0", "--out", str(out)]
    assert subprocess.run(args, capture_output=True, text=True).returncode == 0
    diff = json.loads(out.read_text())["differences_points"]["k-10 - k0"]
    assert diff["image_auroc"]["per_seed"] == [5.0, 4.1, 5.2]  # seed order, not file order
    assert diff["image_auroc"]["more_than_two_std"] and diff["image_auroc"]["two_std_larger_row"] == 1.2
    assert diff["pixel_auroc"]["mean"] == 0.0 and not diff["pixel_auroc"]["more_than_two_std"]
    assert not diff["aupro"]["more_than_two_std"]  # behind
    bad = subprocess.run([*args[:5], "--pairs", "k-10-k1", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "k-10-k1" in bad.stderr
    # PREFIX=runs.csv: the same variant from two benchmarks, told apart
    args = [sys.executable, str(script), f"new_={runs}", str(runs), "--pairs", "new_k-10-k-10", "--out", str(out)]
    assert subprocess.run(args, capture_output=True, text=True).returncode == 0
    diff = json.loads(out.read_text())["differences_points"]["new_k-10 - k-10"]
    assert diff["image_auroc"]["per_seed"] == [0.0, 0.0, 0.0]
    # --metrics LABEL=a,b,c: defectmap test's metrics.json files, seeds 0, 1, 2 in the order given
    files = []
    for seed, value in enumerate((0.94, 0.93, 0.96)):
        files.append(tmp_path / f"metrics{seed}.json")
        files[-1].write_text(json.dumps({"image_auroc": value, "pixel_auroc": 0.8, "aupro": 0.7, "pixel_ap": 0.5}))
    args = [sys.executable, str(script), str(runs), "--metrics", "m=" + ",".join(map(str, files)), "--pairs", "k-10-m",
            "--out", str(out)]  # fmt: skip
    assert subprocess.run(args, capture_output=True, text=True).returncode == 0
    assert json.loads(out.read_text())["differences_points"]["k-10 - m"]["image_auroc"]["per_seed"] == [1.0, 2.1, -0.8]


def test_score_factors_script_gives_per_type_auroc_and_the_brightness_correlation(tmp_path):
    # bench/score_factors.py over a bench/hard_cases.py file: model a scores good tiles by their distance from the
    # training median grey level (100), model b by the level itself; a ranks every hole above every good tile.
    train = tmp_path / "train"
    train.mkdir()
    for i, level in enumerate((90, 100, 110)):
        Image.fromarray(np.full((8, 8), level, np.uint8)).save(train / f"{i}.png")
    images = []
    for i, level in enumerate((40, 80, 110, 180)):
        path = tmp_path / f"good{i}.png"
        Image.fromarray(np.full((8, 8), level, np.uint8)).save(path)
        images.append({"path": str(path), "defect": "good", "score_a": abs(level - 100), "score_b": level})
    images += [{"path": "", "defect": "hole", "score_a": 100 + i, "score_b": 50 + 100 * i} for i in range(2)]
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({"a": "A.ckpt", "b": "B.ckpt", "images": images}))
    out = tmp_path / "factors.json"
    script = Path(__file__).resolve().parents[1] / "bench" / "score_factors.py"
    args = [sys.executable, str(script), str(cases), "--train-dir", str(train), "--out", str(out)]
    assert subprocess.run(args, capture_output=True, text=True).returncode == 0
    result = json.loads(out.read_text())
    [row] = result["files"]
    assert result["train_median_level"] == 100.0
    assert row["spearman_a_distance"] == pytest.approx(1.0) and row["spearman_b_level"] == pytest.approx(1.0)
    assert row["spearman_b_distance"] < 1.0
    assert row["auroc_per_type_a"] == {"hole": 1.0} and row["auroc_per_type_b"] == {"hole": 0.5}


def test_per_type_script_matches_runs_to_the_reference_by_seed(tmp_path):
    # bench/per_type.py: benchmark runs' per-type AUROC minus a score_factors.py side, seed by seed, in points.
    reference = [{"hole": 0.9, "scratch": 0.8 + s / 10} for s in (0, 1)]
    factors = {"files": [{"a": f"runs/k0/seed{s}/model.ckpt", "auroc_per_type_a": reference[s]} for s in (0, 1)]}
    types = {"hole": {"image_auroc": 0.95}, "scratch": {"image_auroc": 0.8}}
    runs = [{"method": "prn", "variant": "v", "seed": s, "image_auroc": 0.9, "defect_types": types} for s in (1, 0, 7)]
    (tmp_path / "factors.json").write_text(json.dumps(factors))
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    script = Path(__file__).resolve().parents[1] / "bench" / "per_type.py"
    out = tmp_path / "out.json"
    args = [sys.executable, str(script), "--results", str(tmp_path / "results.json"), "--reference",
            str(tmp_path / "factors.json"), "--out", str(out)]  # fmt: skip
    assert subprocess.run(args, capture_output=True, text=True).returncode == 0
    result = json.loads(out.read_text())["differences_points"]["v"]
    assert result["hole"] == {"seeds": [0, 1], "per_seed": [5.0, 5.0], "mean": 5.0}  # seed 7 has no reference
    assert result["scratch"] == {"seeds": [0, 1], "per_seed": [0.0, -10.0], "mean": -5.0}


def test_export_speed_script_times_the_three_formats_of_the_same_weights():
    # bench/export_speed.py: one model, checkpoint / ONNX / TorchScript, the exports' maps equal to eager's.
    script = Path(__file__).resolve().parents[1] / "bench" / "export_speed.py"
    args = [sys.executable, str(script), "--one", "ae", "--size", "32", "--repeats", "1"]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["format"] for r in rows] == ["checkpoint (eager)", "onnx", "torchscript"]
    assert all(r["max_map_difference"] < 1e-4 and r["images_per_s_batch32"] > 0 for r in rows)


def test_feature_error_speed_script_times_both_error_kinds(tmp_path):
    # bench/feature_error_speed.py: every reconstruction model, l2 and features on the same weights.
    pytest.importorskip("efficientnet_lite_pytorch")
    script = Path(__file__).resolve().parents[1] / "bench" / "feature_error_speed.py"
    out = tmp_path / "speed.json"
    args = [sys.executable, str(script), "--size", "32", "--repeats", "1", "--out", str(out)]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["ae", "daad", "pmb"]
    assert all(r[f"img_s_batch{b}_{e}"] > 0 for r in rows for b in (1, 32) for e in ("l2", "features"))


def test_paired_auroc_script_matches_images_by_path_and_bounds_the_difference(tmp_path):
    # bench/paired_auroc.py: a metrics.json against one side of a hard_cases.py file, same images by path.
    rng = np.random.default_rng(0)
    labels = [0] * 30 + [1] * 30
    base = rng.normal(size=60) + np.array(labels)
    images = [{"path": f"img{i}.png", "label": label, "score": float(s + 3 * label)}
              for i, (label, s) in enumerate(zip(labels, base, strict=True))]  # fmt: skip
    hard = [{"path": f"img{i}.png", "defect": "hole" if label else "good", "score_a": 0.0, "score_b": float(s)}
            for i, (label, s) in enumerate(zip(labels, base, strict=True))][::-1]  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps({"images": images + [{"path": "x.png", "label": 1, "score": 0}]}))
    (tmp_path / "hard.json").write_text(json.dumps({"images": hard}))
    script = Path(__file__).resolve().parents[1] / "bench" / "paired_auroc.py"
    out = tmp_path / "out.json"
    args = [sys.executable, str(script), "--pair", str(tmp_path / "metrics.json"), f"{tmp_path / 'hard.json'}:b",
            "--out", str(out)]  # fmt: skip
    assert subprocess.run(args, capture_output=True, text=True).returncode == 0
    [row] = json.loads(out.read_text())["pairs"]
    assert row["images"] == 60 and row["defective"] == 30  # x.png is in one file only
    low, high = row["interval_points"]
    assert 0 < low <= row["difference_points"] <= high
    hard[0]["defect"] = "good" if hard[0]["defect"] != "good" else "hole"
    (tmp_path / "hard.json").write_text(json.dumps({"images": hard}))
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode != 0 and "differently" in result.stderr


def test_png_level_script_times_both_levels_and_the_levels_keep_the_pixels(tiny_dataset, tmp_path, monkeypatch):
    # bench/png_level.py: maps, masks and overlays of the same scored images at zlib levels 6 and 1.
    from io import BytesIO

    from defectmap import outputs
    from tests.conftest import tiny_config

    ckpt = training.fit(tiny_config("ae", tiny_dataset), tmp_path / "run", progress=False)
    script = Path(__file__).resolve().parents[1] / "bench" / "png_level.py"
    out = tmp_path / "png.json"
    images = tiny_dataset / "tiny" / "test"
    args = [sys.executable, str(script), str(ckpt), str(images), "--limit", "3", "--out", str(out)]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["images"] == 3 and list(figures["levels"]) == ["6", "1"]
    for level in figures["levels"].values():
        assert set(level) == {"map", "mask", "overlay"}
        assert all(kind["ms_per_image"] > 0 and kind["bytes_per_image"] > 0 for kind in level.values())
    # The level changes the bytes, never the pixels.
    anomaly_map = np.random.default_rng(0).random((30, 40))
    decoded = []
    for level in (6, 1):
        monkeypatch.setattr(outputs, "PNG_LEVEL", level)
        buffer = BytesIO()
        outputs.map_to_png(anomaly_map, {"map_median": 0.2, "map_threshold": 0.6}, buffer)
        decoded.append(np.asarray(Image.open(buffer)))
    assert np.array_equal(*decoded)


def test_criteria_script_reproduces_the_stored_comparison(tmp_path):
    # bench/criteria.py pairs stored three-seed results; #5's row must equal bench/compare.py's stored figures.
    bench = Path(__file__).resolve().parents[1] / "bench"
    out = tmp_path / "criteria.json"
    result = subprocess.run([sys.executable, str(bench / "criteria.py"), "--out", str(out)], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = json.loads(out.read_text())
    assert [row["issue"] for row in table] == ["#3"] * 9 + ["#4"] * 4 + ["#5"] * 4
    stored = json.loads((bench / "results" / "benchmark_mt_prn256_pertype" / "comparison.json").read_text())
    expected = stored["differences_points"]["prn_k10_synthetic_half - prn_k0"]
    for metric, difference in table[-4]["differences_points"].items():
        assert {k: v for k, v in difference.items() if k != "std"} == expected[metric]
    assert result.stdout.count("\n") == 2 + len(table)  # header, rule, one row each


def test_regions_script_counts_found_defects_and_false_regions(tiny_dataset, tmp_path):
    # bench/regions.py: evaluate's region figures (tests/test_regions.py) for several minimum areas.
    from tests.conftest import tiny_config

    bench = Path(__file__).resolve().parents[1] / "bench"
    ckpt = training.fit(tiny_config("ae", tiny_dataset), tmp_path / "run", progress=False)
    out = tmp_path / "regions.json"
    args = [sys.executable, str(bench / "regions.py"), str(ckpt), "--min-areas", "1,4", "--out", str(out)]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [run] = json.loads(out.read_text())["runs"]
    assert run["test_images"] == 7 and [row["min_area"] for row in run["table"]] == [1, 4]
    assert all(0 <= row["defects_found"] <= 1 and row["good_images"] == 3 for row in run["table"])
    first, second = run["table"]
    assert second["regions_per_good_image"] <= first["regions_per_good_image"]  # a larger minimum keeps fewer
    assert second["regions_per_defective_image"] <= first["regions_per_defective_image"]


def test_criteria_near_copy_rows_are_the_stored_per_seed_differences():
    bench = Path(__file__).resolve().parents[1] / "bench"
    table = {row["pair"]: row for row in json.loads((bench / "results" / "criteria.json").read_text())}
    row = next(r for pair, r in table.items() if "near-copies of the training anomalies (similarity 0.7)" in pair)
    for seed in range(3):
        runs = json.loads((bench / "results" / "near_copies_mt" / f"seed{seed}.json").read_text())["runs"]
        k0, k10 = (run["without_near_copies_0.7"] for run in runs)
        for metric, difference in row["differences_points"].items():
            assert difference["per_seed"][seed] == pytest.approx(100 * (k10[metric] - k0[metric]), abs=0.051)


def test_rejects_script_counts_decisions_at_the_checkpoint_threshold(tmp_path):
    # bench/rejects.py: a re-calibrated threshold applied to a test already scored, nothing scored again
    ckpt = tmp_path / "model.ckpt"
    from defectmap.checkpoint import FORMAT, FORMAT_VERSION

    calibration = {"threshold": 0.5, "threshold_rule": "false-reject rate 0.0 on 30 good", "false_reject_rate": 0.0,
                   "val_images": 30}  # fmt: skip
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "calibration": calibration}, ckpt)
    images = [{"label": 0, "score": s} for s in (0.1, 0.6, 0.7)] + [{"label": 1, "score": s} for s in (0.5, 0.9)]
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"threshold": 0.65, "images": images}))
    out = tmp_path / "rejects.json"
    script = Path(__file__).resolve().parents[1] / "bench" / "rejects.py"
    args = [sys.executable, str(script), str(ckpt), str(metrics), "--out", str(out)]
    assert subprocess.run(args, capture_output=True, text=True).returncode == 0
    [row] = json.loads(out.read_text())
    assert row["calibrated"] == {"threshold": 0.5, "good_rejected": 2, "of_good": 3, "defects_missed": 1,
                                 "of_defective": 2}  # fmt: skip
    assert (row["as_tested"]["good_rejected"], row["as_tested"]["defects_missed"]) == (1, 1)
    assert row["promised"] == {"calibration_images": 30, "expected": pytest.approx(3 / 31), "at_most": 1}
    bad = subprocess.run([*args[:3], f"{metrics},{metrics}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "one metrics.json per checkpoint" in bad.stderr

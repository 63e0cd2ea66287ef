"""The bench/ scripts: each computes its figures from stored or freshly trained runs as its docstring says."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectmap import training
from defectmap.checkpoint import load_checkpoint


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
    assert [row["issue"] for row in table] == ["#3"] * 10 + ["#4"] * 5 + ["#5"] * 4
    stored = json.loads((bench / "results" / "benchmark_mt_prn256_pertype" / "comparison.json").read_text())
    expected = stored["differences_points"]["prn_k10_synthetic_half - prn_k0"]
    for metric, difference in table[-4]["differences_points"].items():
        assert {k: v for k, v in difference.items() if k != "std"} == expected[metric]
    assert result.stdout.count("\n") == 2 + len(table)  # header, rule, one row each
    assert result.stdout.strip() in (bench.parent / "README.md").read_text()  # the README shows today's table


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


def test_daad_latent_script_retrains_a_discriminator_that_learns_and_scores_every_layer(tiny_dataset, tmp_path):
    # bench/daad_latent.py --retrain-discriminator: a fresh discriminator on the checkpoint's fixed reconstructions.
    from tests.conftest import tiny_config

    ckpt = training.fit(tiny_config("daad", tiny_dataset), tmp_path / "run", progress=False)
    script = Path(__file__).resolve().parents[1] / "bench" / "daad_latent.py"
    figures = {}
    for steps in (0, 100):
        out = tmp_path / f"latent{steps}.json"
        args = [sys.executable, str(script), str(ckpt), "--retrain-discriminator", str(steps), "--out", str(out)]
        result = subprocess.run(args, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        figures[steps] = json.loads(out.read_text())[0]
    assert "retrained_discriminator" not in figures[0]
    retrained = figures[100]["retrained_discriminator"]
    assert retrained["final_loss_last50"] < 2 * np.log(2) - 0.1  # it learned: below chance
    for row in figures.values():
        assert {"map max", "layer 0 position max", "layer 1 pooled"} <= row["test"].keys()
        assert all(0 <= auroc <= 1 for auroc in row["test"].values())
    assert figures[0]["test"]["map max"] == figures[100]["test"]["map max"]  # the map does not use the discriminator
    assert figures[0]["test"]["layer 1 pooled"] != figures[100]["test"]["layer 1 pooled"]


def test_good_images_script_trains_each_count_at_the_same_steps(tiny_dataset, tmp_path):
    # bench/good_images.py: N good training images per run, epochs scaled so every run takes the same steps.
    script = Path(__file__).resolve().parents[1] / "bench" / "good_images.py"
    sets = ["data.image_size=32", "train.batch_size=4", "model.channels=[8,16]", "model.latent_channels=4",
            "train.device=cpu", "train.patience=5"]  # fmt: skip
    args = [sys.executable, str(script), "--data", str(tiny_dataset), "--category", "tiny", "--model", "ae",
            "--counts", "2,0", "--epochs", "1", "--out", str(tmp_path / "out"),
            *(f"--set={s}" for s in sets)]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "good_images_ae.json").read_text())
    available = summary["available"]
    assert [(run["images"], run["epochs"]) for run in summary["runs"]] == [(2, round(available / 2)), (available, 1)]
    for run in summary["runs"]:
        assert len(run["history"]) == run["epochs_run"] == run["epochs"]  # patience 5 epochs: every epoch runs
        # Patience waits the steps of 5 epochs over all the images (whole batches of 4), whatever N is.
        assert f"train.patience_steps={5 * (available // 4)}" in run["sets"]
        assert run["train_config"]["patience_steps"] == 5 * (available // 4)
        run_dir = tmp_path / "out" / "ae" / f"images{run['images']}" / "seed0"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["training_normals"]["train_images"] == (2 if run["images"] == 2 else 0)
    assert result.stdout.count("| 2 | 1 |") == 1
    too_many = subprocess.run([*args[:8], "--counts", "999", *args[10:]], capture_output=True, text=True)
    assert too_many.returncode == 2 and "999" in too_many.stderr
    # --split-per-seed: each seed draws its own good and validation images.
    drawn = [*args[:8], "--counts", "2", "--seeds", "2", "--split-per-seed", *args[10:]]
    drawn[drawn.index("--out") + 1] = str(tmp_path / "drawn")
    assert subprocess.run(drawn, capture_output=True, text=True).returncode == 0
    seeds = [load_checkpoint(tmp_path / "drawn" / "ae" / "images2" / f"seed{seed}" / "model.ckpt")["config"]["data"]
             for seed in (0, 1)]  # fmt: skip
    assert [data["split_seed"] for data in seeds] == [0, 1]

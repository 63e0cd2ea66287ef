"""The benchmark runner writes its tables and skips finished runs when run again."""

import json
from pathlib import Path

import pytest
import yaml

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
    sections = {name: values for name, values in yaml.safe_load(preset.read_text()).items() if name != "method"}
    assert sections  # a preset changes something
    for name, overrides in sections.items():
        section = getattr(cfg, name)
        assert all(getattr(section, key) == (tuple(v) if isinstance(v, list) else v) for key, v in overrides.items())


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

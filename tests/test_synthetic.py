"""Anomaly synthesis: deterministic per generator, values in [0, 1], masks that mark what changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectmap.data import synthetic
from defectmap.data.synthetic import (
    SYNTHETIC_KINDS,
    extended_anomaly,
    load_textures,
    otsu_foreground,
    perlin_noise,
    real_copy,
    synthesize,
)
from defectmap.errors import DataError
from tests.conftest import write_image


def _image(seed: int = 0, size: int = 48) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_synthesis_is_deterministic_in_range_and_marks_changes(kind):
    image = _image()
    textures = [torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)]
    for seed in range(5):
        a, mask_a = synthesize(image, kind, torch.Generator().manual_seed(seed), textures)
        b, mask_b = synthesize(image, kind, torch.Generator().manual_seed(seed), textures)
        assert torch.equal(a, b) and torch.equal(mask_a, mask_b)
        assert a.min() >= 0 and a.max() <= 1 and a.shape == image.shape
        assert set(mask_a.unique().tolist()) <= {0.0, 1.0} and mask_a.sum() > 0
        assert torch.equal(a[:, mask_a == 0], image[:, mask_a == 0])  # nothing changes outside the mask
    c, _ = synthesize(image, kind, torch.Generator().manual_seed(99), textures)
    assert not torch.equal(a, c)


def test_perlin_uses_procedural_textures_without_a_folder_and_keeps_gray_images_gray():
    gray = _image()[:1].expand(3, -1, -1).clone()
    out, mask = synthetic.perlin_anomaly(gray, torch.Generator().manual_seed(1), textures=None)
    assert mask.sum() > 0
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])


def test_perlin_noise_is_smooth_and_bounded():
    noise = perlin_noise(64, 64, (4, 4), torch.Generator().manual_seed(0))
    assert noise.abs().max() < 1.0
    assert (noise[:, 1:] - noise[:, :-1]).abs().max() < 0.2  # gradient noise: no jumps between neighbours


def test_real_copy_varies_image_and_mask_together_by_the_chosen_symmetries():
    image, mask = _image(), (_image(1)[0] > 0.7).float()
    views = {}
    for transform in ("flip", "dihedral"):
        seen = set()
        for seed in range(64):
            out, out_mask = real_copy(image, mask, torch.Generator().manual_seed(seed), transform)
            again, _ = real_copy(image, mask, torch.Generator().manual_seed(seed), transform)
            assert torch.equal(out, again) and out.shape == image.shape
            marked = image[:, mask > 0].sort(dim=1).values  # the same defect pixels, moved with the mask
            assert torch.equal(out[:, out_mask > 0].sort(dim=1).values, marked)
            seen.add(out.numpy().tobytes())
        views[transform] = len(seen)
    assert views == {"flip": 2, "dihedral": 8}
    with pytest.raises(DataError, match="square"):
        real_copy(image[:, :40], mask[:40], torch.Generator(), "dihedral")
    with pytest.raises(DataError, match="unknown real-anomaly transform"):
        real_copy(image, mask, torch.Generator(), "shear")


def test_extended_anomaly_pastes_the_defect_inside_the_foreground():
    normal = torch.zeros(3, 40, 40)
    defect = torch.zeros(3, 40, 40)
    defect_mask = torch.zeros(40, 40)
    defect[:, 5:10, 5:12], defect_mask[5:10, 5:12] = 1.0, 1.0
    foreground = torch.zeros(40, 40)
    foreground[20:, 20:] = 1
    for seed in range(5):
        out, mask = extended_anomaly(normal, defect, defect_mask, torch.Generator().manual_seed(seed), foreground)
        assert mask.sum() > 0 and out.min() >= 0 and out.max() <= 1
        ys, xs = torch.nonzero(mask, as_tuple=True)
        centre = (int(ys.float().mean()), int(xs.float().mean()))
        assert centre[0] >= 20 - 8 and centre[1] >= 20 - 8  # centred on a foreground pixel (clamped at borders)
        assert torch.equal(out[:, mask == 0], normal[:, mask == 0])
    empty, mask = extended_anomaly(normal, defect, torch.zeros(40, 40), torch.Generator())
    assert mask.sum() == 0 and torch.equal(empty, normal)


def test_otsu_foreground_finds_an_object_on_a_background():
    image = torch.full((3, 50, 50), 0.1)
    image[:, 15:35, 10:40] = 0.8
    fg = otsu_foreground(image)
    assert fg[25, 25] == 1 and fg[2, 2] == 0
    assert otsu_foreground(torch.full((3, 20, 20), 0.5)).all()  # flat image: all foreground


def test_load_textures_reads_a_folder_and_reports_a_missing_one(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        write_image(tmp_path / "dtd" / cls / "t.jpg", rng.random((30, 40, 3)))
    textures = load_textures(tmp_path / "dtd", 16)
    assert len(textures) == 2 and textures[0].shape == (3, 16, 16) and textures[0].dtype == torch.uint8
    with pytest.raises(DataError, match="texture folder"):
        load_textures(tmp_path / "missing", 16)
    with pytest.raises(DataError, match="unknown synthetic anomaly"):
        synthesize(_image(), "paint", torch.Generator())


def test_synth_command_writes_example_panels(tiny_dataset, tmp_path, capsys):
    from PIL import Image

    from defectmap.cli import main

    out = tmp_path / "examples"
    args = ["synth", "--data", str(tiny_dataset), "--category", "tiny", "--out", str(out), "-n", "3", "--quiet",
            "--set", "data.image_size=32", "--set", "data.anomalies=1"]  # fmt: skip
    assert main(args) == 0
    panels = sorted(out.glob("*.png"))
    assert len(panels) == 3 and Image.open(panels[0]).size == (96, 32)
    assert main(["synth", "--data", str(tiny_dataset), "--category", "tiny", "--out", str(out), "--kinds", "x"]) == 2
    assert "unknown synthetic anomaly 'x'" in capsys.readouterr().err
    # PRN's training settings shape the panels: beta_max 0 pastes the pure texture, 1 blends it with the image.
    plain = ["synth", "--data", str(tiny_dataset), "--category", "tiny", "-n", "2", "--quiet", "--kinds", "perlin",
             "--set", "data.image_size=32"]  # fmt: skip
    assert main([*plain, "--out", str(tmp_path / "a"), "--set", "model.beta_max=1.0"]) == 0
    assert main([*plain, "--out", str(tmp_path / "b"), "--set", "model.beta_max=0.0"]) == 0
    a, b = (np.asarray(Image.open(sorted((tmp_path / d).glob("*.png"))[0])) for d in ("a", "b"))
    assert not np.array_equal(a, b)
    # Without real negatives, a real image shown as itself has its unmarked pixels grey (not trained) in the mask panel.
    real = ["synth", "--data", str(tiny_dataset), "--category", "tiny", "-n", "4", "--quiet", "--set",
            "data.image_size=32", "--set", "data.anomalies=1", "--set", "model.real_copy_share=1.0"]  # fmt: skip
    for name, negatives in (("d", "false"), ("e", "true")):
        assert main([*real, "--out", str(tmp_path / name), "--set", f"model.real_negatives={negatives}"]) == 0
    greys = [(np.asarray(Image.open(p))[:, 64:] == 128).any() for d in "de" for p in sorted((tmp_path / d).glob("*"))]
    assert any(greys[:4]) and not any(greys[4:])
    assert main([*plain, "--out", str(tmp_path / "c"), "--set", "model.real_copy_transform=shear"]) == 2
    assert "model.real_copy_transform must be one of: flip, dihedral" in capsys.readouterr().err

"""Bad input wherever images enter: datasets, `predict`, and the files behind them (hypothesis-generated)."""

import csv
import errno
import io
import os
import stat

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from defectmap.cli import main
from defectmap.data.images import load_image
from defectmap.errors import DataError
from tests.conftest import write_image

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"]


def encoded(mode: str, width: int, height: int, fmt: str, seed: int) -> bytes:
    rgb = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(rgb)[:, :, 0].astype(np.uint16) * 257)
    elif mode in ("I", "F"):
        image = rgb.convert("L").convert(mode)
    else:
        image = rgb.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def check_loaded_or_data_error(path):
    try:
        array = load_image(path)
    except DataError as exc:
        assert str(path.name) in str(exc) and "\n" not in str(exc)
        return None
    assert array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.float32
    assert np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0
    return array


@FAST
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".png", ".jpg", ".bmp", ".tif"]))
def test_arbitrary_bytes_load_or_fail_clearly(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"x{suffix}"
    path.write_bytes(data)
    check_loaded_or_data_error(path)


@FAST
@given(
    mode=st.sampled_from(MODES),
    fmt=st.sampled_from(["PNG", "TIFF", "BMP", "JPEG"]),
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    cut=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
def test_every_mode_and_truncation_loads_or_fails_clearly(tmp_path_factory, mode, fmt, width, height, cut, seed):
    try:
        data = encoded(mode, width, height, fmt, seed)
    except (OSError, ValueError, KeyError):
        return  # PIL cannot write this mode in this format: nothing to read back
    folder = tmp_path_factory.mktemp("modes")
    whole = folder / f"whole.{fmt.lower()}"
    whole.write_bytes(data)
    array = check_loaded_or_data_error(whole)
    assert array is not None and array.shape[:2] == (height, width)  # every complete file loads
    cut_path = folder / f"cut.{fmt.lower()}"
    cut_path.write_bytes(data[: int(len(data) * cut)])
    check_loaded_or_data_error(cut_path)


def test_exif_rotation_is_applied(tmp_path):
    image = Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8))  # 20 wide, 10 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees for display
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").shape == (20, 10, 3)


def test_wrong_extension_is_read_by_content(tmp_path):
    write_image(tmp_path / "real_png.png", np.full((6, 7, 3), 0.5))
    (tmp_path / "named.jpg").write_bytes((tmp_path / "real_png.png").read_bytes())
    np.testing.assert_allclose(load_image(tmp_path / "named.jpg"), load_image(tmp_path / "real_png.png"))


def test_bad_training_image_fails_before_any_output(tiny_dataset, tmp_path, capsys):
    (tiny_dataset / "tiny" / "train" / "good" / "03.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "run"
    code = main(["train", "--data", str(tiny_dataset), "--category", "tiny", "--out", str(out), "--quiet",
                 "--set", "data.image_size=32"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "03.png" in err and err.count("\n") == 1
    assert not out.exists()


def test_model_config_errors_come_before_decoding_images(tiny_dataset, tmp_path, capsys):
    """A model's own config check (here PMB's odd query kernel) fails before any image is decoded."""
    (tiny_dataset / "tiny" / "train" / "good" / "03.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "run"
    code = main(["train", "--model", "pmb", "--data", str(tiny_dataset), "--category", "tiny", "--out", str(out),
                 "--quiet", "--set", "data.image_size=32", "--set", "model.query_kernel=4"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "model.query_kernel must be odd" in err and err.count("\n") == 1
    assert not out.exists()


def test_predict_reports_and_skips_bad_files(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "ae", "--data", str(tiny_dataset), "--category", "tiny", "--out", str(run),
                 "--quiet", "--set", "data.image_size=32", "--set", "train.epochs=1",
                 "--set", "model.channels=[8,16]"]) == 0  # fmt: skip
    folder = tmp_path / "incoming"
    write_image(folder / "ok1.png", np.random.default_rng(0).random((30, 30, 3)))
    write_image(folder / "ok2.png", np.random.default_rng(1).random((20, 40)))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("hello")
    (folder / "cut.png").write_bytes((folder / "ok1.png").read_bytes()[:60])
    (folder / "notes.txt").write_text("not an image suffix: ignored")
    out = tmp_path / "pred"
    assert main(["predict", str(run / "model.ckpt"), str(folder), "--out", str(out), "--quiet"]) == 0
    scored = {row["path"].split("/")[-1] for row in csv.DictReader((out / "scores.csv").open())}
    errors = {row["path"].split("/")[-1]: row["error"] for row in csv.DictReader((out / "errors.csv").open())}
    assert scored == {"ok1.png", "ok2.png"}
    assert set(errors) == {"empty.png", "text.jpg", "cut.png"}
    assert "empty" in errors["empty.png"] and "skipped 3" in capsys.readouterr().err
    # Only unreadable files: nothing scored is a failure (exit 1), and errors.csv still says why.
    only_bad = [str(folder / name) for name in ("empty.png", "text.jpg")]
    assert main(["predict", str(run / "model.ckpt"), *only_bad, "--out", str(tmp_path / "bad"), "--quiet"]) == 1
    assert len(list(csv.DictReader((tmp_path / "bad" / "errors.csv").open()))) == 2


def test_unwritable_output_is_one_line(tiny_dataset, capsys):
    code = main(["train", "--data", str(tiny_dataset), "--category", "tiny", "--out", "/proc/defectmap-test",
                 "--quiet", "--set", "data.image_size=32", "--set", "train.epochs=1",
                 "--set", "model.channels=[8,16]"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("defectmap: error: cannot write /proc/defectmap-test") and err.count("\n") == 1


def test_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    from defectmap import checkpoint
    from defectmap.errors import OutputError

    target = tmp_path / "metrics.json"
    checkpoint.atomic_write(target, lambda tmp: tmp.write_text("old"))

    def full(tmp):
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device"):
        checkpoint.atomic_write(target, full)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_umasks_permissions_and_keep_a_replaced_files(tmp_path, umask, mode):
    # Checkpoints, metrics.json, reports and exports are written atomically; a service account or a colleague must be
    # able to read them as they could any file the user writes (a temporary file's owner-only mode must not leak).
    from defectmap import checkpoint

    old = os.umask(umask)
    try:
        checkpoint.atomic_write(tmp_path / "new.json", lambda tmp: tmp.write_text("{}"))
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        os.chmod(kept, 0o640)
        checkpoint.atomic_write(kept, lambda tmp: tmp.write_text("new"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == mode
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "new"

"""Checkpoints: weights, the resolved config, calibration and library versions, written atomically.

Loaded with `torch.load(weights_only=True)`: plain data and tensors only, never arbitrary pickles.
"""

from __future__ import annotations

import os
import pickle
import platform
import secrets
import stat
import zipfile
from pathlib import Path
from typing import Any

import torch

from defectmap.errors import CheckpointError, OutputError

FORMAT = "defectmap-checkpoint"
STATE_FORMAT = "defectmap-training-state"  # RUN/last.ckpt, for `train --resume` (see resume.py)
EXPORT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts"}  # `engine.load` tells exports apart by these
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    import torchvision

    from defectmap import __version__

    return {
        "defectmap": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def _temporary_beside(path: Path) -> Path:
    """A new empty file next to `path`, with the permissions a plain open() would give it (the umask applies;
    tempfile's are owner-only, which would leave a checkpoint or report unreadable to a service or a colleague)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)`, then rename over `path`: readers never see a half-written file.

    A full disk or a read-only location is one clear error, and the previous `path` stays intact. The file gets the
    permissions of the one it replaces, or the umask's for a new one.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary_beside(path)
        write(tmp)
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "write" in str(exc).lower()):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
            raise OutputError(f"cannot write {path}: {reason}; free space or choose another --out") from exc
        raise


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, config: dict, **extra: Any) -> None:
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "versions": versions(),
        **extra,
    }
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, expected_format: str = FORMAT) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder without model.ckpt: give a run folder (train's --out) or a checkpoint"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix in EXPORT_SUFFIXES.values():  # only the calibration's writers get here with one
        raise CheckpointError(
            f"{path} is an exported model, which keeps the threshold it was exported with: re-calibrate its "
            "model.ckpt, then export again"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupted or not a defectmap checkpoint") from exc
    found = payload.get("format") if isinstance(payload, dict) else None
    if found == STATE_FORMAT and expected_format == FORMAT:
        raise CheckpointError(
            f"{path} is a training state for `train --resume`, not a model: use the model.ckpt that train writes "
            "beside it when training ends"
        )
    if found != expected_format:
        raise CheckpointError(f"{path} is not a {expected_format} file")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, newer than this defectmap understands "
            f"({FORMAT_VERSION}); upgrade defectmap"
        )
    return payload


def update_calibration(path: str | Path, calibration: dict) -> None:
    """Replace a checkpoint's calibration in place (atomically), keeping everything else. The checkpoint then scores
    at the tiling its threshold was set for (`data.tile`, `data.tile_score`)."""
    payload = load_checkpoint(path)
    payload["calibration"] = calibration
    for key in ("tile", "tile_score"):
        if key in calibration:
            payload["config"]["data"][key] = calibration[key]
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))

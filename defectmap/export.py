"""ONNX and TorchScript export, and runners that turn an exported file back into a `Detector`.

The exported graph is the model itself: (B, 3, S, S) images in [0, 1] -> (scores (B,), maps (B, S, S)).
Pre-processing (resize) and post-processing (map resize to the original size, normalisation,
threshold) stay the shared functions of `data.transforms` and `threshold`, used by `evaluate`,
`predict` and the service alike, so an exported model and its checkpoint cannot drift apart.
The resolved config and calibration travel inside the file (ONNX metadata, TorchScript extra file).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from defectmap.checkpoint import EXPORT_SUFFIXES, atomic_write, versions
from defectmap.config import config_to_dict, resolve_config
from defectmap.errors import CheckpointError, DefectmapError
from defectmap.models.base import Output

METADATA_KEY = "defectmap"
FORMATS = tuple(EXPORT_SUFFIXES)


class ExportGraph(nn.Module):
    """The model with a tuple output, frozen for inference (eval mode, parametrizations baked in)."""

    def __init__(self, detector):
        super().__init__()
        from defectmap.engine import build_model

        # A fresh instance, not a deepcopy: tracing may touch module state, and removing a
        # parametrization edits its module's class, which a deepcopy would share with the original.
        self.model = build_model(detector.config)
        self.model.load_state_dict(detector.model.state_dict())
        self.eval()  # the wrapper too: torch.onnx.export restores the wrapper's mode, recursively, when it is done
        for module in self.model.modules():
            for name in list(getattr(module, "parametrizations", {}).keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out.score, out.anomaly_map


RECORDS = ("category", "history", "training_normals", "training_anomalies", "trained_files")  # for `test` and `info`


def _metadata(detector) -> str:
    records = {key: detector.info[key] for key in RECORDS if key in detector.info}
    return json.dumps(
        {"config": config_to_dict(detector.config), "calibration": detector.calibration, "versions": versions(),
         "records": records}
    )  # fmt: skip


def export(detector, path: str | Path, fmt: str | None = None) -> Path:
    """Write `detector` as ONNX (opset 18, dynamic batch) or TorchScript; returns the path.

    The format defaults to the one `path`'s suffix names (.onnx or .ts), and the two must agree.
    """
    path = Path(path)
    named = {suffix: name for name, suffix in EXPORT_SUFFIXES.items()}.get(path.suffix)
    fmt = fmt or named or "onnx"
    if fmt not in FORMATS:
        raise DefectmapError(f"unknown export format '{fmt}'; choose {' or '.join(FORMATS)}")
    if named != fmt:
        suffix = EXPORT_SUFFIXES[fmt]
        raise DefectmapError(f"{path}: name a {fmt} export *{suffix}, the suffix test, predict and serve read")
    graph = ExportGraph(detector)
    size = detector.config.data.image_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    metadata = _metadata(detector)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about shapes fixed at export time
            traced = torch.jit.trace(graph, example, check_trace=False)

        def write_script(tmp: Path) -> None:
            torch.jit.save(traced, str(tmp), _extra_files={METADATA_KEY: metadata})
            _check_parity(graph, TorchScriptModel(tmp, torch.device("cpu")), path, size)

        atomic_write(path, write_script)
        return path
    try:
        import onnx
    except ImportError as exc:
        raise DefectmapError('ONNX export needs the deploy extra: pip install -e ".[deploy]"') from exc

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (example,), str(tmp), input_names=["images"], output_names=["scores", "maps"],
                              dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}, "maps": {0: "batch"}},
                              opset_version=18, dynamo=False)  # fmt: skip
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, metadata
        onnx.save(proto, str(tmp))
        _check_parity(graph, OnnxModel(tmp), path, size)

    atomic_write(path, write)
    return path


PARITY_TOLERANCE = 1e-4  # relative to the largest map value (at least 1), as the export parity tests use


def _check_parity(graph: ExportGraph, exported, path: Path, size: int) -> None:
    """Refuse an export whose scores or maps differ from the model's on three fresh random images.

    Three, not the two it was traced with, so the dynamic batch axis is checked as well. Raising here, inside
    `atomic_write`, leaves nothing at `path`.
    """
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scores, maps = graph.eval()(images)
    out = exported(images)
    scale = max(1.0, float(maps.abs().max()), float(scores.abs().max()))
    difference = max(float((out.anomaly_map - maps).abs().max()), float((out.score - scores).abs().max()))
    if not difference <= PARITY_TOLERANCE * scale:  # also catches NaN
        raise DefectmapError(
            f"{path}: the export does not reproduce the model (outputs differ by up to {difference:.3g} on random "
            "images), so nothing was written; please report it with `defectmap --version`"
        )


class OnnxModel:
    """Runs an exported ONNX graph with onnxruntime behind the model contract: images -> Output."""

    def __init__(self, path: Path, device: torch.device | None = None):
        try:
            import onnxruntime
        except ImportError as exc:
            raise DefectmapError('running ONNX models needs the deploy extra: pip install -e ".[deploy]"') from exc
        providers = ["CPUExecutionProvider"]
        # onnxruntime-gpu has the CUDA provider; the plain onnxruntime wheel runs on the CPU only
        if device is not None and device.type == "cuda":
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                warnings.warn(
                    f"{path} runs on the CPU: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu "
                    "to run ONNX models on the GPU, or use the checkpoint)",
                    stacklevel=2,
                )
        # No busy-waiting between runs: every run sits between PyTorch ops (pre-processing, map resizing), whose
        # OpenMP threads would share the cores with onnxruntime's spinning ones. On a 2-core CPU a 160² image's
        # pre-processing plus the demo AE's run took 13.4 ms with spinning and 4.1 ms without.
        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise CheckpointError(f"{path} is not a readable ONNX model") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise CheckpointError(f"{path} was not exported by defectmap (no '{METADATA_KEY}' metadata)")
        self.metadata = json.loads(meta[METADATA_KEY])

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, images: torch.Tensor) -> Output:
        scores, maps = self.session.run(None, {"images": images.detach().cpu().float().numpy()})
        return Output(torch.from_numpy(scores), torch.from_numpy(maps))


class TorchScriptModel:
    """Runs an exported TorchScript graph behind the model contract: images -> Output."""

    def __init__(self, path: Path, device: torch.device):
        files = {METADATA_KEY: ""}
        try:
            self.module = torch.jit.load(str(path), map_location=device, _extra_files=files)
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable TorchScript model") from exc
        if not files[METADATA_KEY]:
            raise CheckpointError(f"{path} was not exported by defectmap (no '{METADATA_KEY}' metadata)")
        self.metadata = json.loads(files[METADATA_KEY])
        self.module.eval()

    def eval(self) -> TorchScriptModel:
        return self

    def __call__(self, images: torch.Tensor) -> Output:
        with torch.no_grad():
            scores, maps = self.module(images)
        return Output(scores, maps)


def load_exported(path: Path, device: torch.device):
    """A Detector around an exported file.

    `.onnx` runs on onnxruntime's CPU provider, or its CUDA provider when `device` is CUDA and onnxruntime-gpu is
    installed; either way the Detector's device is the CPU, where the inputs are handed to onnxruntime.
    """
    from defectmap.engine import Detector

    if not path.is_file():
        raise CheckpointError(f"exported model {path} does not exist")
    if path.suffix == ".onnx":
        model, device = OnnxModel(path, device), torch.device("cpu")
    else:
        model = TorchScriptModel(path, device)
    cfg = resolve_config(model.metadata["config"])
    info = {"versions": model.metadata["versions"], **model.metadata.get("records", {})}  # older exports: none
    return Detector(model, cfg, model.metadata["calibration"], device, info)

"""HTTP inference service (FastAPI + uvicorn, extra `[serve]`): POST /predict, GET /health, GET /model.

An upload goes through the same pre-processing, model and post-processing as `predict`. Bad input
is a 4xx with a message that says what to send; requests are limited in bytes, pixels and time.
(No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime.)
"""

import asyncio
import base64
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from defectmap.data.images import ImageTooLarge, decode_image
from defectmap.data.transforms import preprocess
from defectmap.describe import describe
from defectmap.engine import Detector, decide, score_batch
from defectmap.errors import DataError, DefectmapError
from defectmap.export import OnnxModel
from defectmap.outputs import map_to_png
from defectmap.regions import defect_pixels, defect_regions

IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "image/x-ms-bmp", "application/octet-stream")


@dataclass
class ServiceLimits:
    max_bytes: int = 20 * 1024 * 1024  # request body
    max_pixels: int = 40_000_000  # decoded image
    timeout_s: float = 30.0  # one inference, queueing included


def inference_thread() -> ThreadPoolExecutor:
    """The one thread that runs all of the service's PyTorch work, loading the model included.

    One inference at a time keeps memory bounded. And PyTorch's CPU kernels run on an OpenMP thread team per calling
    thread, so a second team (the model loaded on the main thread, inference on a worker) contends with the first for
    the cores: the demo AE's batch-1 call took 13 ms instead of 5 to 6 ms on a 2-core CPU. Load the model with
    `inference_thread().submit(engine.load, ...)` and give the same executor to `create_app`.
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="defectmap-inference")


def create_app(detector: Detector, limits: ServiceLimits | None = None, executor: ThreadPoolExecutor | None = None):
    try:
        from fastapi import FastAPI, HTTPException, Request
        from fastapi.responses import JSONResponse
    except ImportError as exc:
        raise DefectmapError('the service needs the serve extra: pip install -e ".[serve]"') from exc

    limits = limits or ServiceLimits()
    app = FastAPI(title="defectmap", version="1")
    executor = executor or inference_thread()
    cal = detector.calibration

    # A PyTorch model pre-processes on its inference thread too (one OpenMP team). onnxruntime has threads of its
    # own, so for an ONNX model the next upload's pre-processing may overlap the current run: with the demo AE on
    # a 2-core CPU, 141-153 against 104-112 requests/s (bench/serve.py).
    overlap = isinstance(detector.model, OnnxModel)

    def prepare(image: np.ndarray) -> torch.Tensor:
        return preprocess(image, detector.config.data.image_size)[None]

    def run_model(image_or_batch, size: tuple[int, int]) -> dict:
        batch = image_or_batch if overlap else prepare(image_or_batch)
        return score_batch(detector.model, batch, [size], detector.device)[0]

    async def bounded_body(request: Request) -> bytes:
        """The body, refused as soon as it passes the byte limit: a chunked upload has no Content-Length to check."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_bytes:
                raise HTTPException(413, f"request body is over the limit of {limits.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_upload(request: Request) -> tuple[bytes, str]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limits.max_bytes:
            raise HTTPException(413, f"request body of {length} bytes is over the limit of {limits.max_bytes}")
        if content_type not in (*IMAGE_TYPES, "multipart/form-data"):
            raise HTTPException(
                415, f"unsupported content type '{content_type}': send image/png, image/jpeg, image/bmp, "
                "image/tiff, application/octet-stream, or multipart/form-data with a 'file' field"
            )  # fmt: skip
        data, name = await bounded_body(request), "body"
        if content_type == "multipart/form-data":

            async def replay() -> dict:  # the form is parsed from the bytes already read
                return {"type": "http.request", "body": data, "more_body": False}

            form = await Request(request.scope, replay).form()
            upload = form.get("file")
            if upload is None or not hasattr(upload, "read"):
                raise HTTPException(422, "multipart request has no 'file' field: send -F file=@image.png")
            data, name = await upload.read(), upload.filename or "file"
        if not data:
            raise HTTPException(400, "empty request body: send the bytes of an image file")
        return data, name

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    def model_info() -> dict:
        return describe(detector)  # as `defectmap info --json`

    @app.post("/predict")
    async def predict(request: Request, map: bool = False, min_area: int = 1) -> dict:
        if min_area < 1:
            raise HTTPException(400, f"min_area must be at least 1 pixel, got {min_area}")
        data, name = await read_upload(request)
        try:
            image = decode_image(data, name, limits.max_pixels)
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from exc
        except DataError as exc:
            raise HTTPException(400, str(exc)) from exc
        try:
            job = await asyncio.to_thread(prepare, image) if overlap else image
            work = asyncio.get_running_loop().run_in_executor(executor, run_model, job, image.shape[:2])
            result = await asyncio.wait_for(work, timeout=limits.timeout_s)
        except TimeoutError as exc:
            raise HTTPException(503, f"inference took longer than {limits.timeout_s} s; try again later") from exc
        over = defect_pixels(result["map"], cal)
        response = {
            "score": result["score"],
            **decide(cal, result["score"]),  # normalised_score, defective, decision: as predict's
            "defect_area": float(over.mean()),  # share of pixels above the calibrated pixel threshold
            "regions": defect_regions(result["map"], cal, min_area),  # its connected parts, highest peak first
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
        }
        if map:
            buffer = io.BytesIO()
            map_to_png(result["map"], cal, buffer)
            response["map_png"] = base64.b64encode(buffer.getvalue()).decode()
        return response

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # the worker keeps serving
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}"})

    return app


def serve(
    detector: Detector, host: str, port: int, limits: ServiceLimits, executor: ThreadPoolExecutor | None = None
) -> None:
    if not 0 <= port <= 65535:
        raise DefectmapError(f"--port must be 0 to 65535, got {port}")
    if min(limits.max_bytes, limits.max_pixels, limits.timeout_s) <= 0:
        raise DefectmapError(f"--max-bytes, --max-pixels and --timeout must be above 0, got {limits}")
    try:
        import uvicorn
    except ImportError as exc:
        raise DefectmapError('the service needs the serve extra: pip install -e ".[serve]"') from exc
    uvicorn.run(
        create_app(detector, limits, executor), host=host, port=port, limit_concurrency=64, timeout_keep_alive=5
    )

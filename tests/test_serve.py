"""The HTTP service on loopback: good requests, and every kind of bad one, with the worker still serving."""

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from defectmap import engine, training
from defectmap.data.demo import add_defect, fabric
from defectmap.errors import DefectmapError
from defectmap.regions import defect_regions
from defectmap.serve import ServiceLimits, create_app, serve
from tests.conftest import tiny_config

uvicorn = pytest.importorskip("uvicorn")


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from defectmap.data.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("serve")
    write_demo_dataset(root / "data", category="tiny", size=48, n_train=8, n_test_good=2, n_per_defect=1)
    detector = engine.load(training.fit(tiny_config("ae", root / "data"), root / "run", progress=False), device="cpu")
    limits = ServiceLimits(max_bytes=200_000, max_pixels=300 * 300, timeout_s=10)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(detector, limits), host="127.0.0.1", port=port,
                                           log_level="error"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", detector
    server.should_exit = True
    thread.join(timeout=10)


def call(url: str, data: bytes | None = None, content_type: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def multipart(data: bytes, field: str = "file") -> tuple[bytes, str]:
    boundary = "defectmapboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    return body, f"multipart/form-data; boundary={boundary}"


def test_health_and_model(service):
    url, detector = service
    assert call(f"{url}/health") == (200, {"status": "ok"})
    status, info = call(f"{url}/model")
    assert status == 200 and info["method"] == "ae" and info["threshold"] == detector.calibration["threshold"]
    assert info["image_size"] == 32 and "torch" in info["versions"]


def test_predict_matches_the_library(service, tmp_path):
    url, detector = service
    image, _ = add_defect(fabric(np.random.default_rng(5), 60), "hole", np.random.default_rng(6))
    data = png_bytes(image)
    status, body = call(f"{url}/predict?map=true", data, "image/png")
    assert status == 200
    (tmp_path / "x.png").write_bytes(data)
    from defectmap.data.mvtec import Sample

    [row] = engine.predict(detector, [Sample(tmp_path / "x.png", 0)], progress=False)
    [by_path] = engine.predict(detector, [str(tmp_path / "x.png")], progress=False)  # a plain path works too
    assert by_path["score"] == row["score"] and by_path["path"] == tmp_path / "x.png"
    assert body["score"] == pytest.approx(row["score"], abs=1e-7)
    assert body["defective"] == row["defective"] and body["decision"] == row["decision"]
    assert row["decision"] == ("defect" if row["defective"] else "good")  # one rule: engine.decide
    assert (body["width"], body["height"]) == (60, 60) and 0.0 <= body["defect_area"] <= 1.0
    # The defect pixels' connected parts, as predict's regions.csv lists them, and their share of the image.
    library = defect_regions(row["map"], detector.calibration)
    assert [{**r, "peak": pytest.approx(r["peak"]), "normalised_peak": pytest.approx(r["normalised_peak"])}
            for r in library] == body["regions"]  # fmt: skip
    assert body["regions"] and sum(r["area"] for r in body["regions"]) / 3600 == pytest.approx(body["defect_area"])
    biggest = max(r["area"] for r in body["regions"])
    assert [r["area"] for r in call(f"{url}/predict?min_area={biggest}", data, "image/png")[1]["regions"]] == [biggest]
    status, refused = call(f"{url}/predict?min_area=0", data, "image/png")
    assert status == 400 and "min_area must be at least 1" in refused["detail"]
    assert Image.open(io.BytesIO(base64.b64decode(body["map_png"]))).size == (60, 60)
    status, body2 = call(f"{url}/predict", *multipart(data))
    assert status == 200 and body2["score"] == body["score"] and "map_png" not in body2


@pytest.mark.parametrize(
    "case,expected",
    [("not_an_image", 400), ("empty", 400), ("truncated", 400), ("too_many_pixels", 413), ("too_many_bytes", 413),
     ("wrong_type", 415), ("multipart_without_file", 422)],
)  # fmt: skip
def test_bad_requests_are_4xx_and_the_worker_survives(service, case, expected):
    url, _ = service
    good = png_bytes(fabric(np.random.default_rng(1), 40))
    requests = {
        "not_an_image": (b"hello, I am text", "image/png"),
        "empty": (b"", "image/png"),
        "truncated": (good[: len(good) // 2], "image/png"),
        "too_many_pixels": (png_bytes(np.zeros((400, 400))), "image/png"),
        "too_many_bytes": (b"\x00" * 300_000, "application/octet-stream"),
        "wrong_type": (good, "text/plain"),
        "multipart_without_file": multipart(good, field="other"),
    }
    status, body = call(f"{url}/predict", *requests[case])
    assert status == expected, body
    assert isinstance(body["detail"], str) and body["detail"]
    assert call(f"{url}/predict", good, "image/png")[0] == 200  # still serving


@pytest.mark.parametrize(("port", "limits"), [(70000, ServiceLimits()), (0, ServiceLimits(timeout_s=0))])
def test_bad_port_or_limits_are_refused_before_starting(service, port, limits):
    with pytest.raises(DefectmapError, match="--port must be|must be above 0"):
        serve(service[1], "127.0.0.1", port, limits)


def test_a_pytorch_model_is_loaded_and_run_on_one_thread(service, monkeypatch):
    # One OpenMP team: a second one (load on the main thread, inference on workers) halves the model's speed.
    import defectmap.serve as serve_module
    from defectmap import cli

    url, detector = service
    names, original = [], serve_module.score_batch

    def recording(*args, **kwargs):
        names.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(serve_module, "score_batch", recording)
    image = png_bytes(fabric(np.random.default_rng(1), 40))
    for _ in range(3):
        assert call(f"{url}/predict", image, "image/png")[0] == 200
    assert len(set(names)) == 1 and names[0].startswith("defectmap-inference")

    loaded, served = [], []
    monkeypatch.setattr(cli.engine, "load", lambda *a, **k: loaded.append(threading.current_thread().name) or detector)
    monkeypatch.setattr(serve_module, "serve", lambda *args: served.append(args))
    assert cli.main(["serve", "model.ckpt", "--port", "0"]) in (0, None)
    executor = served[0][-1]
    assert loaded[0].startswith("defectmap-inference")
    assert executor.submit(lambda: threading.current_thread().name).result() == loaded[0]


def test_a_chunked_upload_over_the_byte_limit_is_refused_while_it_is_read(service):
    # Without Content-Length the size is only known while reading: the service stops reading at the limit (413)
    # instead of taking a 10 MB body into memory first. Driven through the ASGI interface to count what it read.
    import asyncio

    app = create_app(service[1], ServiceLimits(max_bytes=200_000, max_pixels=300 * 300, timeout_s=10))
    chunk, reads, sent = b"\x00" * 16_384, [], []

    async def receive() -> dict:
        reads.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": len(reads) < 640}  # 10 MB in all

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"image/png"), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["detail"] == "request body is over the limit of 200000 bytes"
    assert sum(reads) <= 200_000 + len(chunk)  # stopped at the limit

"""End-to-end tests of the HTTP API against a real uvicorn server with a random-weight model."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image
from service_helpers import RunningServer, image_bytes

from model.hardware import NATIVE_BF16_FLAGS, cpu_flags
from service import imaging


def open_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def post_stylize(server: RunningServer, content: bytes, style: bytes, **fields: str) -> httpx.Response:
    with server.client() as client:
        return client.post("/v1/stylize", files={"content": ("c.png", content), "style": ("s.png", style)}, data=fields)


# ------------------------------------------------------------------------------------------- operations
def test_health_info_and_index(server: RunningServer) -> None:
    with server.client() as client:
        assert client.get("/health/live").json() == {"status": "live"}
        assert client.get("/health/ready").json() == {"status": "ready"}
        info = client.get("/v1/info").json()
        assert info["model"]["arch"] == "a2k"
        assert info["model"]["weights"] == "random"
        assert info["model"]["parameters"] > 1_000_000
        # auto precision: float32, or bfloat16 where this CPU has it natively and the start-up probe found it faster
        native_bf16 = bool(set(NATIVE_BF16_FLAGS) & cpu_flags())
        assert info["device"] == "cpu" and info["dtype"] in (("float32", "bfloat16") if native_bf16 else ("float32",))
        assert info["batching"] == {"max_batch_size": 8, "max_wait_ms": 150.0, "queue_size": 64, "bucket_px": 64}
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert client.get("/docs").status_code == 200
        schema = client.get("/openapi.json").json()
        alpha = schema["components"]["schemas"]["StylizeJSON"]["properties"]["alpha"]
        assert alpha["maximum"] == 1.0 and alpha["default"] == 1.0 and "description" in alpha


def test_stylize_multipart_png_and_headers(server: RunningServer, content_png: bytes, style_png: bytes) -> None:
    response = post_stylize(server, content_png, style_png)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    for header in ("x-request-id", "x-queue-ms", "x-compute-ms", "x-total-ms", "server-timing", "x-batch-id"):
        assert header in response.headers
    out = open_image(response.content)
    assert out.size == (64, 48)  # 80x60 fitted into max_side 64, aspect kept
    assert out.mode == "RGB"


def test_request_id_is_echoed(server: RunningServer, content_png: bytes, style_png: bytes) -> None:
    with server.client() as client:
        response = client.post(
            "/v1/stylize",
            files={"content": content_png, "style": style_png},
            headers={"X-Request-ID": "trace-42"},
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42"


def test_output_formats(server: RunningServer, content_png: bytes, style_png: bytes) -> None:
    for fmt, mime, pil_format in (("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")):
        response = post_stylize(server, content_png, style_png, format=fmt, max_side="64")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == mime
        assert open_image(response.content).format == pil_format


def test_stylize_json(server: RunningServer, content_png: bytes, style_png: bytes) -> None:
    body = {
        "content": base64.b64encode(content_png).decode(),
        "style": "data:image/png;base64," + base64.b64encode(style_png).decode(),
        "format": "jpeg",
    }
    with server.client() as client:
        response = client.post("/v1/stylize/json", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["format"] == "jpeg" and (payload["width"], payload["height"]) == (64, 48)
    assert set(payload["timing"]) == {"queue_ms", "compute_ms", "total_ms"}
    assert payload["request_id"] == response.headers["x-request-id"]
    assert open_image(base64.b64decode(payload["image"])).size == (64, 48)


def test_preserve_color_applies_content_chroma(server: RunningServer, style_png: bytes) -> None:
    # The exact luminance transfer is unit-tested in test_imaging; here: the option reaches the model path.
    # A strongly blue content must come out bluish with preserve_color, whatever the (random) model draws.
    content = image_bytes((64, 64), "PNG", color=(20, 60, 220), pattern=False)
    plain = post_stylize(server, content, style_png)
    kept = post_stylize(server, content, style_png, preserve_color="true")
    assert plain.status_code == kept.status_code == 200, kept.text
    plain_rgb = imaging.to_tensor(open_image(plain.content)).mean(dim=(1, 2))  # (3,)
    kept_rgb = imaging.to_tensor(open_image(kept.content)).mean(dim=(1, 2))
    assert kept_rgb[2] - kept_rgb[0] > (plain_rgb[2] - plain_rgb[0]) + 0.1, (plain_rgb, kept_rgb)


# ------------------------------------------------------------------------------------------- interpolate
def test_interpolate_multipart_and_json(
    server: RunningServer, content_png: bytes, style_png: bytes, style2_jpeg: bytes
) -> None:
    files = [("content", content_png), ("style", style_png), ("style", style2_jpeg)]
    with server.client() as client:
        response = client.post("/v1/interpolate", files=files, data={"weights": "3, 1"})
        assert response.status_code == 200, response.text
        assert open_image(response.content).size == (64, 48)
        body = {
            "content": base64.b64encode(content_png).decode(),
            "style": [base64.b64encode(style_png).decode(), base64.b64encode(style2_jpeg).decode()],
            "weights": [0.5, 0.5],
        }
        json_response = client.post("/v1/interpolate/json", json=body)
        assert json_response.status_code == 200, json_response.text


def test_interpolate_weight_validation(server: RunningServer, content_png: bytes, style_png: bytes) -> None:
    files = [("content", content_png), ("style", style_png), ("style", style_png)]
    cases = {
        "1": "2 styles",
        "1,2,3": "2 styles",
        "0,0": "all weights are zero",
        "-1,2": ">= 0",
        "a,b": "comma-separated",
        "nan,1": "finite",
    }
    with server.client() as client:
        for weights, expected in cases.items():
            response = client.post("/v1/interpolate", files=files, data={"weights": weights})
            assert response.status_code == 422, (weights, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_parameter"
            assert error["message"].startswith("weights:") and expected in error["message"], error
        missing = client.post("/v1/interpolate", files=files)
        assert missing.status_code == 422 and "weights" in missing.json()["error"]["message"]
        one_style = client.post(
            "/v1/interpolate", files=[("content", content_png), ("style", style_png)], data={"weights": "1"}
        )
        assert one_style.status_code == 422 and "2..4" in one_style.json()["error"]["message"]


# ------------------------------------------------------------------------------------------- multistyle
def _half_masks(size: tuple[int, int]) -> tuple[bytes, bytes]:
    width, height = size
    left = Image.new("L", size, 0)
    left.paste(255, (0, 0, width // 2, height))
    right = Image.eval(left, lambda v: 255 - v)
    out = []
    for mask in (left, right):
        buffer = io.BytesIO()
        mask.save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out[0], out[1]


def test_multistyle_masks_and_labels(
    server: RunningServer, content_png: bytes, style_png: bytes, style2_jpeg: bytes
) -> None:
    left, right = _half_masks((80, 60))
    labels = Image.new("L", (80, 60), 0)
    labels.paste(1, (40, 0, 80, 60))
    label_buffer = io.BytesIO()
    labels.save(label_buffer, "PNG")
    with server.client() as client:
        by_masks = client.post(
            "/v1/multistyle",
            files=[
                ("content", content_png),
                ("style", style_png),
                ("style", style2_jpeg),
                ("mask", left),
                ("mask", right),
            ],
            data={"feather": "4"},
        )
        assert by_masks.status_code == 200, by_masks.text
        by_labels = client.post(
            "/v1/multistyle",
            files=[
                ("content", content_png),
                ("style", style_png),
                ("style", style2_jpeg),
                ("labels", label_buffer.getvalue()),
            ],
            data={"feather": "4"},
        )
        assert by_labels.status_code == 200, by_labels.text
        # Same regions either way: the outputs agree (up to rounding).
        a = imaging.to_tensor(open_image(by_masks.content))
        b = imaging.to_tensor(open_image(by_labels.content))
        assert (a - b).abs().max() < 0.02
        body = {
            "content": base64.b64encode(content_png).decode(),
            "style": [base64.b64encode(style_png).decode(), base64.b64encode(style2_jpeg).decode()],
            "labels": base64.b64encode(label_buffer.getvalue()).decode(),
        }
        assert client.post("/v1/multistyle/json", json=body).status_code == 200


def test_multistyle_region_validation(server: RunningServer, content_png: bytes, style_png: bytes) -> None:
    left, right = _half_masks((80, 60))
    bad_labels = Image.new("L", (80, 60), 5)
    buffer = io.BytesIO()
    bad_labels.save(buffer, "PNG")
    styles = [("content", content_png), ("style", style_png), ("style", style_png)]
    with server.client() as client:
        neither = client.post("/v1/multistyle", files=styles)
        one_mask = client.post("/v1/multistyle", files=[*styles, ("mask", left)])
        both = client.post("/v1/multistyle", files=[*styles, ("mask", left), ("mask", right), ("labels", left)])
        out_of_range = client.post("/v1/multistyle", files=[*styles, ("labels", buffer.getvalue())])
    for response in (neither, one_mask, both, out_of_range):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_parameter"
    assert "1 masks given for 2 styles" in one_mask.json()["error"]["message"]
    assert "pixel value 5" in out_of_range.json()["error"]["message"]


# ------------------------------------------------------------------------------------------- batching
def test_concurrent_requests_share_one_forward_pass(server: RunningServer, style_png: bytes) -> None:
    contents = [image_bytes((64, 64), "PNG", color=(i * 40, 100, 50)) for i in range(4)]
    batches_before = server.state.batcher.stats.batches

    def send(content: bytes) -> httpx.Response:
        return post_stylize(server, content, style_png)

    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(send, contents))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    batch_ids = {r.headers["x-batch-id"] for r in responses}
    sizes = [int(r.headers["x-batch-size"]) for r in responses]
    # max_wait 150 ms: the four requests, sent together, land in at most two forward passes, and at least
    # one pass really carried several requests.
    assert len(batch_ids) <= 2 and max(sizes) >= 2, (batch_ids, sizes)
    assert server.state.batcher.stats.batches - batches_before == len(batch_ids)
    assert server.metric("stya2k_batch_size_count") >= 1


def test_style_cache_hits(server: RunningServer, content_png: bytes) -> None:
    style = image_bytes((64, 64), "PNG", color=(1, 2, 3))
    hits_before = server.metric("stya2k_style_cache_hits_total")
    misses_before = server.metric("stya2k_style_cache_misses_total")
    assert post_stylize(server, content_png, style).status_code == 200
    assert post_stylize(server, content_png, style).status_code == 200
    assert server.metric("stya2k_style_cache_misses_total") == misses_before + 1
    assert server.metric("stya2k_style_cache_hits_total") == hits_before + 1


# ------------------------------------------------------------------------------------------- metrics
def test_metrics_present_and_counting(server: RunningServer, content_png: bytes, style_png: bytes) -> None:
    ok_before = server.metric("stya2k_http_requests_total", 'endpoint="/v1/stylize",status="200"')
    invalid_before = server.metric("stya2k_rejections_total", 'reason="invalid"')
    assert post_stylize(server, content_png, style_png).status_code == 200
    assert post_stylize(server, b"garbage", style_png).status_code == 415
    assert server.metric("stya2k_http_requests_total", 'endpoint="/v1/stylize",status="200"') == ok_before + 1
    assert server.metric("stya2k_rejections_total", 'reason="invalid"') == invalid_before + 1
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "stya2k_request_duration_seconds_bucket",
        "stya2k_queue_wait_seconds_bucket",
        "stya2k_decode_seconds_bucket",
        "stya2k_compute_seconds_bucket",
        "stya2k_encode_seconds_bucket",
        "stya2k_batch_size_bucket",
        "stya2k_queue_depth",
        "stya2k_requests_in_flight",
        "stya2k_style_cache_hits_total",
        "stya2k_style_cache_misses_total",
        'stya2k_rejections_total{reason="queue_full"}',
        'stya2k_rejections_total{reason="oom"}',
        "stya2k_model_info{",
        'le="0.005"',
        'le="2.5"',
    ):
        assert name in text, name
    assert server.metric("stya2k_compute_seconds_count") >= 1


# ------------------------------------------------------------------------------------------- auth
def test_api_key(server_factory, content_png: bytes, style_png: bytes) -> None:  # type: ignore[no-untyped-def]
    secured = server_factory(api_key="s3cret")
    files = {"content": content_png, "style": style_png}
    with secured.client() as client:
        missing = client.post("/v1/stylize", files=files)
        wrong = client.post("/v1/stylize", files=files, headers={"X-API-Key": "nope"})
        info = client.get("/v1/info")
        right = client.post("/v1/stylize", files=files, headers={"X-API-Key": "s3cret"})
        health = client.get("/health/ready")
    for response in (missing, wrong, info):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    assert right.status_code == 200, right.text
    assert health.status_code == 200  # probes stay open


# ------------------------------------------------------------------------------------------- overload
def test_queue_full_429_and_deadline_504(server_factory, content_png: bytes, style_png: bytes) -> None:  # type: ignore[no-untyped-def]
    # queue of 1 and a long batching wait: the first request sits in the queue for 1.5 s.
    tight = server_factory(queue_size=1, max_wait_ms=1500, max_batch_size=8)
    files = {"content": content_png, "style": style_png}
    computed_before = tight.state.batcher.stats.computed
    with ThreadPoolExecutor(max_workers=2) as pool, tight.client() as client:
        # 504: a 200 ms deadline expires while the request waits for batch-mates; it is never computed.
        late = client.post("/v1/stylize", files=files, headers={"X-Deadline-Ms": "200"})
        assert late.status_code == 504, late.text
        assert late.json()["error"]["code"] == "deadline_exceeded"
        assert tight.state.batcher.stats.computed == computed_before
        assert tight.metric("stya2k_rejections_total", 'reason="deadline"') == 1

        first = pool.submit(client.post, "/v1/stylize", files=files)
        waited = time.monotonic()
        while tight.state.batcher.depth == 0 and time.monotonic() - waited < 20:  # until it is queued
            time.sleep(0.005)
        rejected = client.post("/v1/stylize", files=files)
        assert rejected.status_code == 429, rejected.text
        assert rejected.json()["error"]["code"] == "queue_full"
        assert int(rejected.headers["retry-after"]) >= 1
        assert first.result().status_code == 200
    assert tight.metric("stya2k_rejections_total", 'reason="queue_full"') == 1
    assert tight.state.batcher.stats.computed == computed_before + 1


def test_bad_deadline_header(server: RunningServer, content_png: bytes, style_png: bytes) -> None:
    with server.client() as client:
        response = client.post(
            "/v1/stylize", files={"content": content_png, "style": style_png}, headers={"X-Deadline-Ms": "soon"}
        )
    assert response.status_code == 422
    assert "X-Deadline-Ms" in response.json()["error"]["message"]


def test_parameters_are_checked_before_the_deadline_header(
    server: RunningServer, content_png: bytes, style_png: bytes
) -> None:
    """A request with two faults hears of its parameters first (the order the API has always had)."""
    with server.client() as client:
        response = client.post(
            "/v1/stylize",
            files={"content": content_png, "style": style_png},
            data={"max_side": "100000"},
            headers={"X-Deadline-Ms": "soon"},
        )
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("max_side:")

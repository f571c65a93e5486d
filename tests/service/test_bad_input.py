"""A corpus of malformed requests: none may yield a 5xx, every one gets the JSON error shape."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

import httpx
import pytest
from PIL import Image
from service_helpers import RunningServer, image_bytes

MAX_BODY = 300_000


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge image (a decompression bomb needs no more to be caught)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00"))
        + png_chunk(b"IEND", b"")
    )


def png_bad_ihdr_crc(data: bytes) -> bytes:
    """A valid PNG with the CRC of its IHDR chunk flipped: PIL refuses to identify it."""
    crc_at = 8 + 8 + 13  # signature, IHDR length + type, IHDR data
    return data[:crc_at] + bytes(b ^ 0xFF for b in data[crc_at : crc_at + 4]) + data[crc_at + 4 :]


def json_body(text: str) -> dict[str, Any]:
    return {"content": text.encode(), "headers": {"Content-Type": "application/json"}}


def stylize_raw(extra: str) -> dict[str, Any]:
    """A /v1/stylize/json body with valid images and ``extra`` JSON text appended inside the object."""
    return json_body('{"content":"' + GOOD_B64 + '","style":"' + GOOD_B64 + '"' + extra + "}")


def interpolate_raw(weights: str) -> dict[str, Any]:
    return json_body('{"content":"' + GOOD_B64 + '","style":["' + GOOD_B64 + '","' + GOOD_B64 + '"],"weights":'
                     + weights + "}")  # fmt: skip


GOOD = image_bytes((64, 48), "PNG")
GOOD_JPEG = image_bytes((64, 48), "JPEG")
GOOD_B64 = base64.b64encode(GOOD).decode()
TINY = image_bytes((1, 1), "PNG")
COLOUR_LABELS = image_bytes((64, 48), "PNG", color=(255, 0, 0), pattern=False)


def corrupt_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 40]) + data[middle + 40 :]


def multipart(**fields: Any) -> dict[str, Any]:
    """files = content/style/... bytes; data = form values (strings)."""
    files = []
    data = {}
    for name, value in fields.items():
        if isinstance(value, bytes):
            files.append((name, (name, value)))
        elif isinstance(value, list):
            files.extend((name, (name, v)) for v in value)
        else:
            data[name] = value
    return {"files": files, "data": data}


# (case id, method, path, request kwargs, expected status, expected code)
CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("empty content", "POST", "/v1/stylize", multipart(content=b"", style=GOOD), 400, "invalid_image"),
    ("garbage content", "POST", "/v1/stylize", multipart(content=b"\x00\x01garbage" * 10, style=GOOD), 415,
     "unsupported_media_type"),
    ("text content", "POST", "/v1/stylize", multipart(content=b"hello world, not an image", style=GOOD), 415,
     "unsupported_media_type"),
    ("truncated png", "POST", "/v1/stylize", multipart(content=GOOD[: len(GOOD) // 2], style=GOOD), 400,
     "invalid_image"),
    ("truncated jpeg", "POST", "/v1/stylize", multipart(content=GOOD_JPEG[:200], style=GOOD), 400,
     "invalid_image"),
    ("corrupt png data", "POST", "/v1/stylize", multipart(content=corrupt_middle(GOOD), style=GOOD), 400,
     "invalid_image"),
    ("1x1 content", "POST", "/v1/stylize", multipart(content=TINY, style=GOOD), 400, "invalid_image"),
    ("png bomb header", "POST", "/v1/stylize", multipart(content=png_header_only(100_000, 100_000), style=GOOD),
     413, "image_too_large"),
    ("too many pixels", "POST", "/v1/stylize", multipart(content=png_header_only(5000, 5000), style=GOOD), 413,
     "image_too_large"),
    ("broken gif style", "POST", "/v1/stylize", multipart(content=GOOD, style=b"GIF89a-broken"), 400,
     "invalid_image"),
    ("garbage style", "POST", "/v1/stylize", multipart(content=GOOD, style=b"GIFXXa-broken"), 415,
     "unsupported_media_type"),
    ("missing content", "POST", "/v1/stylize", multipart(style=GOOD), 422, "invalid_parameter"),
    ("missing style", "POST", "/v1/stylize", multipart(content=GOOD), 422, "invalid_parameter"),
    ("content as text field", "POST", "/v1/stylize", multipart(content="abc", style=GOOD), 422,
     "invalid_parameter"),
    ("alpha too big", "POST", "/v1/stylize", multipart(content=GOOD, style=GOOD, alpha="2"), 422,
     "invalid_parameter"),
    ("alpha negative", "POST", "/v1/stylize", multipart(content=GOOD, style=GOOD, alpha="-0.1"), 422,
     "invalid_parameter"),
    ("alpha nan", "POST", "/v1/stylize", multipart(content=GOOD, style=GOOD, alpha="nan"), 422,
     "invalid_parameter"),
    ("alpha text", "POST", "/v1/stylize", multipart(content=GOOD, style=GOOD, alpha="strong"), 422,
     "invalid_parameter"),
    ("max_side too small", "POST", "/v1/stylize", multipart(content=GOOD, style=GOOD, max_side="10"), 422,
     "invalid_parameter"),
    ("max_side above limit", "POST", "/v1/stylize", multipart(content=GOOD, style=GOOD, max_side="100000"), 422,
     "invalid_parameter"),
    ("format gif", "POST", "/v1/stylize", multipart(content=GOOD, style=GOOD, format="gif"), 422,
     "invalid_parameter"),
    ("preserve_color maybe", "POST", "/v1/stylize", multipart(content=GOOD, style=GOOD, preserve_color="maybe"),
     422, "invalid_parameter"),
    ("feather too wide", "POST", "/v1/multistyle",
     multipart(content=GOOD, style=[GOOD, GOOD], labels=GOOD, feather="100"), 422, "invalid_parameter"),
    ("colour label map", "POST", "/v1/multistyle",
     multipart(content=GOOD, style=[GOOD, GOOD], labels=COLOUR_LABELS), 422, "invalid_parameter"),
    ("too many styles", "POST", "/v1/interpolate",
     multipart(content=GOOD, style=[GOOD] * 5, weights="1,1,1,1,1"), 422, "invalid_parameter"),
    ("json to multipart endpoint", "POST", "/v1/stylize", {"json": {"content": GOOD_B64, "style": GOOD_B64}},
     415, "unsupported_media_type"),
    ("multipart to json endpoint", "POST", "/v1/stylize/json", multipart(content=GOOD, style=GOOD), 415,
     "unsupported_media_type"),
    ("multipart without boundary", "POST", "/v1/stylize",
     {"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}}, 400, "bad_request"),
    ("malformed json", "POST", "/v1/stylize/json",
     {"content": b'{"content": ', "headers": {"Content-Type": "application/json"}}, 400, "bad_request"),
    ("non-utf8 json", "POST", "/v1/stylize/json",
     {"content": b"\xff\xfe\xfa", "headers": {"Content-Type": "application/json"}}, 400, "bad_request"),
    ("json missing content", "POST", "/v1/stylize/json", {"json": {"style": GOOD_B64}}, 422, "invalid_parameter"),
    ("json bad base64", "POST", "/v1/stylize/json", {"json": {"content": "%%%notbase64", "style": GOOD_B64}},
     422, "invalid_parameter"),
    ("json base64 of text", "POST", "/v1/stylize/json",
     {"json": {"content": base64.b64encode(b"just text").decode(), "style": GOOD_B64}}, 415,
     "unsupported_media_type"),
    ("json wrong type", "POST", "/v1/stylize/json", {"json": {"content": 123, "style": GOOD_B64}}, 422,
     "invalid_parameter"),
    ("json unknown field", "POST", "/v1/stylize/json",
     {"json": {"content": GOOD_B64, "style": GOOD_B64, "strength": 3}}, 422, "invalid_parameter"),
    ("json style list for stylize", "POST", "/v1/stylize/json", {"json": {"content": GOOD_B64, "style": [GOOD_B64]}},
     422, "invalid_parameter"),
    ("json weights count", "POST", "/v1/interpolate/json",
     {"json": {"content": GOOD_B64, "style": [GOOD_B64, GOOD_B64], "weights": [1.0]}}, 422, "invalid_parameter"),
    ("json masks and labels", "POST", "/v1/multistyle/json",
     {"json": {"content": GOOD_B64, "style": [GOOD_B64, GOOD_B64], "masks": [GOOD_B64, GOOD_B64],
               "labels": GOOD_B64}}, 422, "invalid_parameter"),
    ("json array body", "POST", "/v1/stylize/json", {"json": [1, 2, 3]}, 422, "invalid_parameter"),
    ("body too large", "POST", "/v1/stylize", multipart(content=b"\x00" * (MAX_BODY + 10), style=GOOD), 413,
     "body_too_large"),
    ("negative deadline", "POST", "/v1/stylize",
     {**multipart(content=GOOD, style=GOOD), "headers": {"X-Deadline-Ms": "-5"}}, 422, "invalid_parameter"),
    ("get on transfer endpoint", "GET", "/v1/stylize", {}, 405, "method_not_allowed"),
    ("delete on health", "DELETE", "/health/live", {}, 405, "method_not_allowed"),
    ("unknown path", "GET", "/v2/stylize", {}, 404, "not_found"),
    # --- issue 17: structure bounds of JSON bodies (413 before any parser builds the structure)
    ("json 2000 extra keys", "POST", "/v1/stylize/json",
     stylize_raw("," + ",".join(f'"k{i}":0' for i in range(2000))),
     413, "body_too_large"),
    ("json 5000 null weights", "POST", "/v1/interpolate/json",
     interpolate_raw('[' + ",".join(["null"] * 5000) + ']'),
     413, "body_too_large"),
    ("json 3000 style strings", "POST", "/v1/interpolate/json",
     json_body('{"content":"' + GOOD_B64 + '","style":[' + ",".join(['"x"'] * 3000) + '],"weights":[1,1]}'),
     413, "body_too_large"),
    ("json nested 50000 deep", "POST", "/v1/stylize/json",
     stylize_raw(',"alpha":' + "[" * 50000 + "]" * 50000),
     413, "body_too_large"),
    ("json nested 20 deep", "POST", "/v1/stylize/json",
     stylize_raw(',"alpha":' + "[" * 20 + "]" * 20),
     413, "body_too_large"),
    ("json 100k-digit number", "POST", "/v1/stylize/json",
     stylize_raw(',"alpha":1' + "0" * 100_000),
     413, "body_too_large"),
    ("json escaped quotes in a string", "POST", "/v1/stylize/json",
     json_body('{"content":"' + '\\"' * 20000 + '","style":"' + GOOD_B64 + '"}'), 422, "invalid_parameter"),
    ("empty json body", "POST", "/v1/stylize/json", json_body(""), 400, "bad_request"),
    ("whitespace json body", "POST", "/v1/stylize/json", json_body("  \n "), 400, "bad_request"),
    ("json string body", "POST", "/v1/stylize/json", json_body('"just a string"'), 422, "invalid_parameter"),
    # --- issue 17: strict JSON types
    ("json alpha true", "POST", "/v1/stylize/json", {"json": {"content": GOOD_B64, "style": GOOD_B64, "alpha": True}},
     422, "invalid_parameter"),
    ("json alpha string", "POST", "/v1/stylize/json",
     {"json": {"content": GOOD_B64, "style": GOOD_B64, "alpha": "0.5"}}, 422, "invalid_parameter"),
    ("json max_side float", "POST", "/v1/stylize/json",
     {"json": {"content": GOOD_B64, "style": GOOD_B64, "max_side": 64.0}}, 422, "invalid_parameter"),
    ("json preserve_color 1", "POST", "/v1/stylize/json",
     {"json": {"content": GOOD_B64, "style": GOOD_B64, "preserve_color": 1}}, 422, "invalid_parameter"),
    ("json weights as strings", "POST", "/v1/interpolate/json",
     {"json": {"content": GOOD_B64, "style": [GOOD_B64, GOOD_B64], "weights": ["1", "1"]}}, 422,
     "invalid_parameter"),
    ("json infinite weights sum", "POST", "/v1/interpolate/json",
     {"json": {"content": GOOD_B64, "style": [GOOD_B64, GOOD_B64], "weights": [1e308, 1e308]}}, 422,
     "invalid_parameter"),
    ("data url without comma", "POST", "/v1/stylize/json",
     {"json": {"content": "data:image/png;base64" + GOOD_B64, "style": GOOD_B64}}, 422, "invalid_parameter"),
    ("data url not base64", "POST", "/v1/stylize/json",
     {"json": {"content": "data:image/png," + GOOD_B64, "style": GOOD_B64}}, 422, "invalid_parameter"),
    ("base64 with whitespace", "POST", "/v1/stylize/json",
     {"json": {"content": GOOD_B64[:40] + "\n" + GOOD_B64[40:], "style": GOOD_B64}}, 422, "invalid_parameter"),
    # --- issue 17: strict multipart
    ("two style parts on stylize", "POST", "/v1/stylize", multipart(content=GOOD, style=[GOOD, GOOD]), 422,
     "invalid_parameter"),
    ("two content parts", "POST", "/v1/stylize", multipart(content=[GOOD, GOOD], style=GOOD), 422,
     "invalid_parameter"),
    ("two labels parts", "POST", "/v1/multistyle",
     multipart(content=GOOD, style=[GOOD, GOOD], labels=[GOOD, GOOD]), 422, "invalid_parameter"),
    ("two alpha fields", "POST", "/v1/stylize",
     {"files": [("content", ("c", GOOD)), ("style", ("s", GOOD))], "data": {"alpha": ["0.5", "1"]}},
     422, "invalid_parameter"),
    ("empty alpha", "POST", "/v1/stylize", multipart(content=GOOD, style=GOOD, alpha=""), 422, "invalid_parameter"),
    ("empty format", "POST", "/v1/stylize", multipart(content=GOOD, style=GOOD, format=""), 422,
     "invalid_parameter"),
    ("empty preserve_color", "POST", "/v1/stylize", multipart(content=GOOD, style=GOOD, preserve_color=""), 422,
     "invalid_parameter"),
    ("max_side 64.0", "POST", "/v1/stylize", multipart(content=GOOD, style=GOOD, max_side="64.0"), 422,
     "invalid_parameter"),
    ("infinite weights sum", "POST", "/v1/interpolate",
     multipart(content=GOOD, style=[GOOD, GOOD], weights="1e308,1e308"), 422, "invalid_parameter"),
    ("100000 weights", "POST", "/v1/interpolate",
     multipart(content=GOOD, style=[GOOD, GOOD], weights=",".join(["1"] * 100_000)), 422, "invalid_parameter"),
    # --- issue 17: status codes as docs/API.md says
    ("png with bad IHDR crc", "POST", "/v1/stylize", multipart(content=png_bad_ihdr_crc(GOOD), style=GOOD), 400,
     "invalid_image"),
    ("jpeg signature then garbage", "POST", "/v1/stylize", multipart(content=b"\xff\xd8\xff" + b"\x00" * 50,
                                                                     style=GOOD), 400, "invalid_image"),
    ("trailing slash", "GET", "/health/live/", {}, 404, "not_found"),
]  # fmt: skip


@pytest.fixture(scope="module")
def strict_server(server_factory) -> RunningServer:  # type: ignore[no-untyped-def]
    return server_factory(max_body_bytes=MAX_BODY, max_input_pixels=1_000_000)


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 70


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_bad_input_gets_json_error(
    strict_server: RunningServer, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    with strict_server.client() as client:
        response = client.request(method, path, **kwargs)
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    assert (response.status_code, body["error"]["code"]) == (status, code), body
    assert response.headers.get("x-request-id")


def test_size_limits_are_stated_in_bytes_and_mib(strict_server: RunningServer) -> None:
    """A 413 names its limit exactly (bytes, for a program) and readably (MiB, for a person)."""
    with strict_server.client() as client:
        response = client.post("/v1/stylize", **multipart(content=b"\x00" * (MAX_BODY + 10), style=GOOD))
    message = response.json()["error"]["message"]
    assert response.status_code == 413 and "the limit of 300000 bytes (0.286 MiB)" in message, message
    assert "STYA2K_MAX_BODY_BYTES" in message


def test_server_still_healthy_after_corpus(strict_server: RunningServer) -> None:
    with strict_server.client() as client:
        assert client.get("/health/ready").status_code == 200
        ok = client.post("/v1/stylize", files={"content": GOOD, "style": GOOD_JPEG})
    assert ok.status_code == 200, ok.text
    assert strict_server.metric("stya2k_http_requests_total", 'endpoint="/v1/stylize",status="500"') == 0


def test_odd_but_valid_images_are_accepted(strict_server: RunningServer) -> None:
    """Modes a camera or editor may produce: each must be converted, not refused."""
    frames = [Image.new("P", (64, 48), i) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    samples = {
        "rgba": image_bytes((64, 48), "PNG", mode="RGBA", color=(10, 20, 30, 0)),
        "la": image_bytes((64, 48), "PNG", mode="LA", color=(100, 255)),
        "gray": image_bytes((64, 48), "PNG", mode="L", color=90),
        "bilevel": image_bytes((64, 48), "PNG", mode="1", color=1),
        "cmyk-jpeg": image_bytes((64, 48), "JPEG", mode="CMYK", color=(0, 255, 255, 0)),
        "16-bit": image_bytes((64, 48), "PNG", mode="I;16", color=40000),
        "animated-gif": gif.getvalue(),
        "webp": image_bytes((64, 48), "WEBP"),
        "bmp": image_bytes((64, 48), "BMP"),
        "tiff": image_bytes((64, 48), "TIFF"),
    }
    with strict_server.client() as client:
        for name, data in samples.items():
            response = client.post("/v1/stylize", files={"content": data, "style": data})
            assert response.status_code == 200, (name, response.text)


def test_unreadable_response_never_leaks_a_traceback(strict_server: RunningServer) -> None:
    response = httpx.post(strict_server.url + "/v1/stylize", content=b"x" * 10,
                          headers={"Content-Type": "multipart/form-data; boundary=zzz"})  # fmt: skip
    assert response.status_code in (400, 422)
    assert "Traceback" not in response.text


def test_messages_name_the_problem_without_python_internals(strict_server: RunningServer) -> None:
    with strict_server.client() as client:
        text_part = client.post("/v1/stylize", files={"style": GOOD}, data={"content": "abc"})
        duplicate = client.post("/v1/stylize", files=[("content", GOOD), ("style", GOOD), ("style", GOOD)])
        slash = client.get("/v1/info/", follow_redirects=False)
    assert "<class" not in text_part.text and "file part" in text_part.json()["error"]["message"]
    assert duplicate.json()["error"]["message"].startswith("style: sent more than once")
    assert slash.status_code == 404 and "location" not in slash.headers
    assert "'/v1/info'" in slash.json()["error"]["message"]


def test_structure_limit_refusal_is_cheap(strict_server: RunningServer) -> None:
    """A body of a million keys is refused after a scan, and the answer names the limit."""
    with strict_server.client() as client:
        response = client.post("/v1/stylize/json", **stylize_raw("," + ",".join(f'"k{i}":0' for i in range(25_000))))
    assert response.status_code == 413
    assert "STYA2K_MAX_JSON_ITEMS" in response.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------- exposure (issue 17)
def test_metrics_need_the_api_key_unless_configured_open(server_factory) -> None:  # type: ignore[no-untyped-def]
    locked = server_factory(api_key="sesame")
    assert httpx.get(locked.url + "/metrics", timeout=10).status_code == 401
    assert httpx.get(locked.url + "/metrics", headers={"X-API-Key": "sesame"}, timeout=10).status_code == 200
    assert httpx.get(locked.url + "/health/live", timeout=10).status_code == 200  # probes need no key
    open_metrics = server_factory(api_key="sesame", metrics_require_key=False)
    assert httpx.get(open_metrics.url + "/metrics", timeout=10).status_code == 200


def test_model_info_shows_the_weights_file_name_not_its_path() -> None:
    from service.engine import Engine
    from service.metrics import ServiceMetrics
    from service.settings import Settings

    engine = Engine(Settings(weights="/srv/secret/place/stya2k-v0-cpu.pt"), ServiceMetrics())
    engine.weights_label = "/srv/secret/place/stya2k-v0-cpu.pt"
    assert engine.info()["weights"] == "/srv/secret/place/stya2k-v0-cpu.pt"
    assert engine.public_info()["weights"] == "stya2k-v0-cpu.pt"


def test_demo_page_and_api_send_security_headers(strict_server: RunningServer) -> None:
    import hashlib
    import re

    with strict_server.client() as client:
        page = client.get("/")
        api = client.get("/v1/info")
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    script_src = policy.split("script-src")[1].split(";")[0]
    assert "unsafe-inline" not in script_src
    for script in re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL):
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy  # the page's own inline scripts are allowed, nothing else
    assert api.headers["x-content-type-options"] == "nosniff"

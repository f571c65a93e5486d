"""Preset styles (issue 32) through a real server: GET /v1/styles, its files, and style_preset on every transfer
path (multipart, JSON, jobs, video), with the style cache and the order of mixed styles."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from service_helpers import RunningServer, image_bytes
from video_clips import make_clip

from service.presets import PRESETS_DIR, library

NAMES = library().names


def _post(server: RunningServer, path: str, files: list[tuple[str, object]], **data: str) -> httpx.Response:
    return httpx.post(server.url + path, files=files, data=data, timeout=60)


def test_the_shipped_presets_are_a_small_public_domain_set() -> None:
    index = json.loads((PRESETS_DIR / "presets.json").read_text())["presets"]
    assert 10 <= len(index) <= 20 and [item["name"] for item in index] == NAMES
    total = 0
    for item in index:
        assert item["licence"].startswith("public domain"), item
        assert item["name"] in (PRESETS_DIR / "PROVENANCE.md").read_text()
        for path, side in (
            (PRESETS_DIR / f"{item['name']}.jpg", 512),
            (PRESETS_DIR / "thumbnails" / f"{item['name']}.jpg", 160),
        ):
            with Image.open(path) as img:
                assert img.format == "JPEG" and max(img.size) <= side
            total += path.stat().st_size
    assert total < 2_000_000


def test_styles_lists_every_preset_with_its_files(server: RunningServer) -> None:
    with server.client() as client:
        body = client.get("/v1/styles").json()
        assert [style["name"] for style in body["styles"]] == NAMES
        for style in body["styles"]:
            assert {"title", "artist", "year", "licence", "source"} <= style.keys() and style["title"]
            for link, side in ((style["thumbnail"], 160), (style["image"], 512)):
                response = client.get(link)
                assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
                with Image.open(io.BytesIO(response.content)) as img:
                    assert max(img.size) <= side
        missing = client.get("/v1/styles/no_such_painting/thumbnail")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert "starry_night" in missing.json()["error"]["message"]


@pytest.mark.parametrize("name", NAMES)
def test_each_preset_stylizes(server: RunningServer, content_png: bytes, name: str) -> None:
    response = _post(server, "/v1/stylize", [("content", content_png)], style_preset=name)
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as img:
        assert img.format == "PNG" and img.size == (64, 48)


def test_a_preset_is_cached_like_the_same_upload(server: RunningServer, content_png: bytes) -> None:
    name = NAMES[1]
    # A side no other test uses: the content differs, the style features are the cached ones.
    first = _post(server, "/v1/stylize", [("content", image_bytes((40, 30)))], style_preset=name)
    hits = server.metric("stya2k_style_cache_hits_total")
    again = _post(server, "/v1/stylize", [("content", content_png)], style_preset=name)
    upload = _post(server, "/v1/stylize", [("content", content_png), ("style", library().image(name))])
    assert first.status_code == again.status_code == upload.status_code == 200
    assert server.metric("stya2k_style_cache_hits_total") == hits + 2
    assert again.content == upload.content  # the preset is exactly its image


def test_unknown_preset_is_refused_with_the_valid_names(server: RunningServer, content_png: bytes) -> None:
    for path, fields in (("/v1/stylize", {}), ("/v1/jobs", {"mode": "stylize"})):
        response = _post(server, path, [("content", content_png)], style_preset="starry-nite", **fields)
        error = response.json()["error"]
        assert response.status_code == 422 and error["code"] == "invalid_parameter", response.text
        assert error["message"].startswith("style_preset: 'starry-nite' is not a preset style")
        assert ", ".join(NAMES) in error["message"]
    nothing = _post(server, "/v1/stylize", [("content", content_png)])
    assert nothing.status_code == 422 and "style_preset" in nothing.json()["error"]["message"]
    both = _post(server, "/v1/stylize", [("content", content_png), ("style", content_png)], style_preset=NAMES[0])
    assert both.status_code == 422 and "2 styles given" in both.json()["error"]["message"]


def test_mixed_styles_keep_the_order_they_were_sent_in(server: RunningServer, content_png: bytes) -> None:
    """Styles (and so weights and masks) are indexed in the order the parts came: a broken upload sent after a
    preset is style[1], sent before it style[0] (the random-weight model cannot tell styles apart by picture)."""
    broken = ("style", ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40))
    preset = ("style_preset", (None, NAMES[0].encode()))
    for files, index in (([preset, broken], 1), ([broken, preset], 0)):
        response = _post(server, "/v1/interpolate", [("content", content_png), *files], weights="1,0")
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"].startswith(f"style[{index}]:")
    ok = _post(server, "/v1/interpolate", [("content", content_png), preset, ("style", image_bytes())], weights="1,1")
    assert ok.status_code == 200, ok.text


def test_json_endpoints_take_presets(server: RunningServer, content_png: bytes, style_png: bytes) -> None:
    b64 = base64.b64encode(content_png).decode()
    with server.client() as client:
        single = client.post("/v1/stylize/json", json={"content": b64, "style_preset": NAMES[0]})
        blend = client.post("/v1/interpolate/json", json={
            "content": b64, "style": [base64.b64encode(style_png).decode()], "style_preset": [NAMES[2]],
            "weights": [0.5, 0.5]})  # fmt: skip
        regions = client.post("/v1/multistyle/json", json={
            "content": b64, "style_preset": NAMES[:2],
            "labels": base64.b64encode(image_bytes((80, 60), "PNG", mode="L", color=1)).decode()})  # fmt: skip
        bad = client.post(
            "/v1/interpolate/json", json={"content": b64, "style_preset": ["x", NAMES[0]], "weights": [1, 1]}
        )
    for response in (single, blend, regions):
        assert response.status_code == 200, response.text
        assert response.json()["width"] == 64
    assert bad.status_code == 422 and "'x' is not a preset style" in bad.json()["error"]["message"]


def _wait_done(server: RunningServer, location: str) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        view = httpx.get(server.url + location, timeout=10).json()
        if view["state"] in ("done", "failed", "cancelled", "expired"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"job {location} did not end")


def test_jobs_and_video_take_presets(server: RunningServer, content_png: bytes) -> None:
    photo = httpx.post(server.url + "/v1/jobs", timeout=60, files=[
        ("content", content_png), ("style_preset", (None, NAMES[3].encode()))], data={"mode": "stylize"})  # fmt: skip
    clip = httpx.post(server.url + "/v1/jobs", timeout=60, files=[
        ("video", ("clip.mp4", make_clip(frames=3, audio=None))), ("style_preset", (None, NAMES[4].encode())),
        ("style_preset", (None, NAMES[5].encode()))], data={"mode": "interpolate", "weights": "0.7,0.3"})  # fmt: skip
    for accepted, kind in ((photo, "image"), (clip, "video")):
        assert accepted.status_code == 202, accepted.text
        view = _wait_done(server, accepted.headers["location"])
        assert view["state"] == "done" and view["kind"] == kind, view


def test_the_python_client_takes_presets(server: RunningServer, content_png: bytes, style_png: bytes) -> None:
    from service.client import AsyncClient, Client, InvalidParameter, Preset

    with Client(server.url) as client:
        assert [style["name"] for style in client.styles()] == NAMES
        assert client.stylize(content_png, Preset(NAMES[0])).size == (64, 48)
        assert client.interpolate(content_png, [style_png, Preset(NAMES[1])], weights=[1, 2]).size == (64, 48)
        with pytest.raises(InvalidParameter, match="is not a preset style"):
            client.stylize(content_png, Preset("nope"))

    async def run() -> tuple[int, int]:
        async with AsyncClient(server.url) as client:
            return (await client.multistyle(content_png, [Preset(NAMES[0]), Preset(NAMES[1])], labels=labels)).size

    labels = image_bytes((80, 60), "PNG", mode="L", color=1)
    assert asyncio.run(run()) == (64, 48)


def test_the_command_line_takes_presets(server: RunningServer, content_png: bytes, tmp_path: Path) -> None:
    from service import cli

    (tmp_path / "c.png").write_bytes(content_png)
    assert cli.main(["stylize", str(tmp_path / "c.png"), "--style-preset", NAMES[0], "-o", str(tmp_path / "a.png"),
                     "--url", server.url, "-q"]) == 0  # fmt: skip
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    # Several presets for one photo: a folder of CONTENT__PRESET files, as with a folder of styles.
    assert cli.main(["stylize", str(tmp_path / "c.png"), "--style-preset", NAMES[0], "--style-preset", NAMES[1],
                     "-o", str(tmp_path / "many"), "--url", server.url, "-q"]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == sorted(f"c__{n}.png" for n in NAMES[:2])
    assert cli.main(["interpolate", str(tmp_path / "c.png"), "--style-preset", NAMES[0], "--style-preset", NAMES[1],
                     "--weights", "1", "3", "-o", str(tmp_path / "b.png"), "--url", server.url, "-q"]) == 0  # fmt: skip
    with pytest.raises(SystemExit) as usage:
        cli.main(["stylize", str(tmp_path / "c.png"), "--style-preset", "nope", "-o", str(tmp_path / "x.png")])
    assert usage.value.code == 2

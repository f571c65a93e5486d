"""style_fit (issue 19 item 5): crop (a centred square of the style, the default) or whole (all of it, the long
side at STYA2K_STYLE_SIZE), as a setting and per request, through the engine, the HTTP API, the client and the CLI."""

from __future__ import annotations

import asyncio
import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from service_helpers import RunningServer, image_bytes

from model.stya2k import padded_size
from service import cli
from service.client import AsyncClient, Client
from service.contract import Mode, StyleFit, TransferRequest
from service.engine import Engine
from service.errors import InvalidImage, InvalidParameter
from service.metrics import ServiceMetrics
from service.pipeline import prepare, style_key, validate
from service.settings import Settings

TINY = {"weights": "random", "device": "cpu", "threads": 1, "default_side": 64, "max_side": 64, "style_size": 64}
SQUARE = padded_size(64, 64)  # the crop square's padded size at style_size 64


def wide(color: tuple[int, int, int], size: tuple[int, int] = (200, 60)) -> bytes:
    """A panorama-like style (wider than tall); ``color`` makes its bytes (and cache key) unique to a test."""
    return image_bytes(size, "PNG", color=color)


def _engine(**overrides: object) -> Engine:
    engine = Engine(Settings(**{**TINY, **overrides}), ServiceMetrics())
    engine.load()
    return engine


def _request(style: bytes, fit: StyleFit | str | None, **fields: object) -> TransferRequest:
    return TransferRequest(
        mode=Mode.stylize, content=image_bytes((80, 60), color=(30, 120, 200)), styles=[style], style_fit=fit,
        **fields,  # type: ignore[arg-type]
    )


def _features_size(server: RunningServer, style: bytes, fit: StyleFit) -> tuple[int, int] | None:
    features = server.state.engine.cache.peek(style_key(style, server.state.settings.style_size, fit))
    return None if features is None else features.padded_size


# ---------------------------------------------------------------------------------------------- engine
def test_whole_keeps_the_aspect_and_crop_is_the_square() -> None:
    engine = _engine()
    style = wide((200, 30, 30))
    whole = prepare(validate(_request(style, "whole"), engine.settings), engine.settings, engine.lookup_style)
    crop = prepare(validate(_request(style, "crop"), engine.settings), engine.settings, engine.lookup_style)
    default = prepare(validate(_request(style, None), engine.settings), engine.settings, engine.lookup_style)
    assert whole.styles[0].image is not None and whole.styles[0].image.shape == (3, 19, 64)  # 200x60 -> 64x19
    assert crop.styles[0].image is not None and crop.styles[0].image.shape == (3, 64, 64)
    assert default.styles[0].key == crop.styles[0].key != whole.styles[0].key  # the cache key holds the fit
    assert engine.batch_key(crop)[4] == ()  # crop traffic keeps its batch keys
    assert engine.batch_key(whole)[4] == (padded_size(19, 64),) == ((32, 64),)
    assert engine.batch_key(whole)[:4] == engine.batch_key(crop)[:4]
    for job in (whole, crop):
        out = engine.run_batch([job])[0]
        assert isinstance(out, torch.Tensor) and out.shape == (3, 48, 64)
    assert engine.cache.peek(whole.styles[0].key).padded_size == (32, 64)  # type: ignore[union-attr]
    assert engine.cache.peek(crop.styles[0].key).padded_size == SQUARE  # type: ignore[union-attr]
    cached = prepare(validate(_request(style, "whole"), engine.settings), engine.settings, engine.lookup_style)
    assert cached.styles[0].features is not None and engine.batch_key(cached) == engine.batch_key(whole)


def test_whole_styles_of_one_padded_size_but_other_shapes_batch_together() -> None:
    """64x19 and 64x21 both pad to 64x32: one batch key, encoded in two groups (a stack needs one shape)."""
    engine = _engine(max_batch_size=4)
    jobs = [
        prepare(validate(_request(wide(color, size), "whole"), engine.settings), engine.settings, engine.lookup_style)
        for color, size in (((10, 200, 10), (200, 60)), ((10, 10, 200), (200, 66)))
    ]
    assert [job.styles[0].image.shape for job in jobs if job.styles[0].image is not None] == [(3, 19, 64), (3, 21, 64)]
    assert engine.batch_key(jobs[0]) == engine.batch_key(jobs[1])
    together = engine.run_batch(jobs)
    alone = [engine.run_batch([job])[0] for job in jobs]  # now from the cache
    for a, b in zip(together, alone, strict=True):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        assert (a.float() - b.float()).abs().max() <= 2  # the same features, batched or not


def test_whole_refuses_a_style_too_elongated_and_a_bad_fit() -> None:
    engine = _engine()
    too_long = wide((90, 90, 90), (400, 60))  # at a 64 px long side its short side would be 10 px < 16
    with pytest.raises(InvalidImage, match=r"style: 400x60 is too elongated for style_fit=whole.*10 px.*16 px"):
        prepare(validate(_request(too_long, "whole"), engine.settings), engine.settings, engine.lookup_style)
    crop = prepare(validate(_request(too_long, "crop"), engine.settings), engine.settings, engine.lookup_style)
    assert crop.styles[0].image is not None and crop.styles[0].image.shape == (3, 64, 64)
    with pytest.raises(InvalidParameter, match=r"style_fit: 'fill' is not allowed; allowed: crop or whole"):
        validate(_request(too_long, "fill"), engine.settings)


def test_whole_upscales_a_small_style_like_crop_does() -> None:
    engine = _engine()
    job = prepare(
        validate(_request(wide((5, 6, 7), (40, 20)), "whole"), engine.settings), engine.settings, engine.lookup_style
    )
    assert job.styles[0].image is not None and job.styles[0].image.shape == (3, 32, 64)


# ---------------------------------------------------------------------------------------------- HTTP
def _post(server: RunningServer, path: str, style: bytes | list[bytes], **data: str) -> httpx.Response:
    styles = style if isinstance(style, list) else [style]
    files = [("content", ("c.png", image_bytes((80, 60), color=(30, 120, 200))))]
    files += [("style", (f"s{i}.png", s)) for i, s in enumerate(styles)]
    with server.client() as client:
        return client.post(path, files=files, data=data)


def _two_tone(color: tuple[int, int, int], size: tuple[int, int] = (200, 60)) -> bytes:
    """A panorama whose left third differs from the rest: the centred crop sees one colour, the whole style two.
    (A flat style gives the same features whatever part of it is taken, so crop and whole could match.)"""
    image = Image.new("RGB", size, color)
    image.paste(tuple(255 - c for c in color), (0, 0, size[0] // 3, size[1]))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_stylize_whole_over_http_encodes_the_whole_style(server: RunningServer) -> None:
    style = _two_tone((220, 20, 140))
    whole = _post(server, "/v1/stylize", style, style_fit="whole")
    assert whole.status_code == 200, whole.text
    assert _features_size(server, style, StyleFit.whole) == (32, 64)
    assert _features_size(server, style, StyleFit.crop) is None  # crop was not asked for
    crop = _post(server, "/v1/stylize", style, style_fit="crop")
    assert crop.status_code == 200, crop.text
    assert _features_size(server, style, StyleFit.crop) == SQUARE
    default = _post(server, "/v1/stylize", style)
    assert default.content == crop.content  # the server's default is crop
    assert whole.content != crop.content  # another style input, another picture
    with server.client() as client:
        assert client.get("/v1/info").json()["limits"]["style_fit"] == "crop"


def test_every_transfer_endpoint_takes_style_fit(server: RunningServer) -> None:
    a, b = wide((1, 200, 200)), image_bytes((60, 200), "PNG", color=(200, 200, 1))  # wide and tall
    mask = io.BytesIO()
    Image.new("L", (80, 60), 255).save(mask, "PNG")
    interpolate = _post(server, "/v1/interpolate", [a, b], weights="0.5,0.5", style_fit="whole")
    assert interpolate.status_code == 200, interpolate.text
    assert _features_size(server, a, StyleFit.whole) == (32, 64)
    assert _features_size(server, b, StyleFit.whole) == (64, 32)  # two shapes in one request
    with server.client() as client:
        files = [("content", ("c.png", image_bytes((80, 60), color=(30, 120, 200))))]
        files += [("style", ("a.png", a)), ("style", ("b.png", b))]
        files += [("mask", ("m1.png", mask.getvalue())), ("mask", ("m2.png", mask.getvalue()))]
        multi = client.post("/v1/multistyle", files=files, data={"style_fit": "whole"})
    assert multi.status_code == 200, multi.text
    encoded = base64.b64encode(b).decode()
    content = base64.b64encode(image_bytes((80, 60), color=(30, 120, 200))).decode()
    with server.client() as client:
        json = client.post("/v1/stylize/json", json={"content": content, "style": encoded, "style_fit": "whole"})
        assert json.status_code == 200, json.text
        interp = client.post(
            "/v1/interpolate/json",
            json={"content": content, "style": [encoded, encoded], "weights": [1, 1], "style_fit": "crop"},
        )
        assert interp.status_code == 200, interp.text
    assert _features_size(server, b, StyleFit.crop) == SQUARE


def test_job_with_style_fit_whole(server: RunningServer) -> None:
    style = wide((77, 7, 177))
    with Client(server.url) as client:
        job = client.submit(image_bytes((80, 60), color=(30, 120, 200)), style, style_fit="whole")
        job.wait(timeout=60, poll_s=0.05)
        assert job.result().data[:4] == b"\x89PNG"
    assert _features_size(server, style, StyleFit.whole) == (32, 64)
    with server.client() as client:
        files = {"content": ("c.png", image_bytes((80, 60))), "style": ("s.png", style)}
        bad = client.post("/v1/jobs", files=files, data={"mode": "stylize", "style_fit": "stretch"})
    assert bad.status_code == 422
    assert bad.json()["error"]["message"].startswith("style_fit: Input should be 'crop' or 'whole'")


def test_different_style_shapes_under_concurrency_go_to_different_batches(server: RunningServer) -> None:
    """Crop, wide-whole and tall-whole requests at once: all answered; no batch mixes style shapes."""
    crop_style = image_bytes((64, 64), "PNG", color=(12, 34, 56))
    wide_style = wide((56, 34, 12))
    tall_style = image_bytes((60, 200), "PNG", color=(34, 12, 56))
    calls = [(crop_style, "crop")] * 3 + [(wide_style, "whole")] * 3 + [(tall_style, "whole")] * 2
    with ThreadPoolExecutor(len(calls)) as pool:
        responses = list(pool.map(lambda call: _post(server, "/v1/stylize", call[0], style_fit=call[1]), calls))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    batches: dict[str, set[bytes]] = {}
    for (style, _), response in zip(calls, responses, strict=True):
        batches.setdefault(response.headers["x-batch-id"], set()).add(style)
    assert all(len(styles) == 1 for styles in batches.values()), "a batch mixed style shapes"
    assert len(batches) >= 3  # three style shapes: at least three forward passes
    # ... and the batcher still combines requests of one shape (it waits up to 150 ms for company).
    assert max(int(r.headers["x-batch-size"]) for r in responses) >= 2


@pytest.mark.parametrize("path", ["/v1/stylize", "/v1/interpolate", "/v1/multistyle", "/v1/jobs"])
def test_bad_style_fit_is_422_naming_the_field_and_the_values(server: RunningServer, path: str) -> None:
    style = image_bytes((64, 64), "PNG")
    extra = {"/v1/interpolate": {"weights": "1,1"}, "/v1/jobs": {"mode": "stylize"}}.get(path, {})
    styles: bytes | list[bytes] = style if path in ("/v1/stylize", "/v1/jobs") else [style, style]
    response = _post(server, path, styles, style_fit="fill", **extra)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert error["message"] == "style_fit: Input should be 'crop' or 'whole' (got 'fill')"
    empty = _post(server, path, styles, style_fit="", **extra)  # FastAPI would take it for "absent"
    assert empty.status_code == 422
    assert empty.json()["error"]["message"].startswith("style_fit: empty value; send crop or whole")


def test_bad_style_fit_in_json_and_too_elongated_style(server: RunningServer) -> None:
    content = base64.b64encode(image_bytes((80, 60))).decode()
    style = base64.b64encode(image_bytes((64, 64))).decode()
    with server.client() as client:
        bad = client.post("/v1/stylize/json", json={"content": content, "style": style, "style_fit": "all"})
        assert bad.status_code == 422
        assert bad.json()["error"]["message"].startswith("style_fit: Input should be 'crop' or 'whole'")
    too_long = _post(server, "/v1/stylize", wide((3, 3, 3), (400, 60)), style_fit="whole")
    assert too_long.status_code == 400
    error = too_long.json()["error"]
    assert error["code"] == "invalid_image"
    assert "too elongated for style_fit=whole" in error["message"] and "style_fit=crop" in error["message"]


def test_the_setting_is_the_default_and_a_request_overrides_it(server_factory) -> None:  # type: ignore[no-untyped-def]
    running = server_factory(style_fit="whole")
    style = wide((99, 199, 29))
    assert _post(running, "/v1/stylize", style).status_code == 200
    assert _features_size(running, style, StyleFit.whole) == (32, 64)
    assert _features_size(running, style, StyleFit.crop) is None
    assert _post(running, "/v1/stylize", style, style_fit="crop").status_code == 200
    assert _features_size(running, style, StyleFit.crop) == SQUARE
    with running.client() as client:
        assert client.get("/v1/info").json()["limits"]["style_fit"] == "whole"


# ---------------------------------------------------------------------------------------------- client, CLI
def test_client_style_fit_option(server: RunningServer) -> None:
    content = image_bytes((80, 60), color=(30, 120, 200))
    a, b = wide((111, 11, 1)), wide((1, 11, 111))
    with Client(server.url) as client:
        client.stylize(content, a, style_fit="whole")
        client.interpolate(content, [a, b], [1, 1], style_fit="whole")
        client.multistyle(content, [a, b], labels=image_bytes((80, 60), mode="L", color=0), style_fit="crop")
        with pytest.raises(ValueError, match="style_fit 'fill' is not supported; use one of crop, whole"):
            client.stylize(content, a, style_fit="fill")
    assert _features_size(server, a, StyleFit.whole) == _features_size(server, b, StyleFit.whole) == (32, 64)
    assert _features_size(server, b, StyleFit.crop) == SQUARE

    async def run_async() -> None:
        async with AsyncClient(server.url) as client:
            await client.stylize(content, c, style_fit="whole")

    c = wide((2, 22, 222))
    asyncio.run(run_async())
    assert _features_size(server, c, StyleFit.whole) == (32, 64)


def test_cli_style_fit_flag_local_and_remote(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, style, too_long = tmp_path / "c.png", tmp_path / "s.png", tmp_path / "long.png"
    content.write_bytes(image_bytes((80, 60)))
    style.write_bytes(wide((123, 45, 67)))
    too_long.write_bytes(wide((4, 5, 6), (2000, 60)))
    local = ["--checkpoint", "random", "--max-side", "64", "--threads", "1"]
    argv = [str(content), str(style), "-o", str(tmp_path / "out.png")]
    assert cli.main(["stylize", *argv, "--style-fit", "whole", *local]) == 0
    # Local styles are prepared at 256 px: a 2000x60 one has a 8 px short side as a whole, and is refused.
    long_argv = [str(content), str(too_long), "-o", str(tmp_path / "long-out.png")]
    assert cli.main(["stylize", *long_argv, "--style-fit", "whole", *local]) == 1
    assert "too elongated for style_fit=whole" in capsys.readouterr().err
    assert cli.main(["stylize", *long_argv, "--style-fit", "crop", *local]) == 0
    assert cli.main(["stylize", *long_argv, *local]) == 0  # crop is the default
    styles = [str(style), str(too_long)]
    assert cli.main(["interpolate", str(content), *styles, "-o", str(tmp_path / "i.png"), "--style-fit", "whole",
                     *local]) == 1  # fmt: skip
    assert cli.main(["stylize", *argv, "--style-fit", "whole", "--url", server.url]) == 0
    assert _features_size(server, style.read_bytes(), StyleFit.whole) == (32, 64)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["stylize", *argv, "--style-fit", "stretch", *local])
    assert exit_info.value.code == 2
    assert "--style-fit: invalid choice: 'stretch' (choose from 'crop', 'whole')" in capsys.readouterr().err

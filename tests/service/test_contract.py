"""The transfer contract is the one source of every range and default: validation, the OpenAPI schema (form
and JSON), the command line and docs/API.md all state the same numbers."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from service import cli
from service.app import create_app
from service.contract import (
    ALPHA,
    DEFAULT_ALPHA,
    DEFAULT_FEATHER,
    DEFAULT_STYLE_FIT,
    FEATHER,
    MAX_SIDE,
    OUTPUT_FORMATS,
    Mode,
    OutputFormat,
    Range,
    StyleFit,
    TransferRequest,
)
from service.errors import InvalidParameter
from service.pipeline import validate
from service.settings import Settings

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "API.md"


def test_range_bounds_and_text() -> None:
    assert ALPHA.contains(0.0) and ALPHA.contains(1.0) and not ALPHA.contains(1.01)
    assert ALPHA.text() == "0..1" and FEATHER.text() == "0..64"
    assert MAX_SIDE.text("STYA2K_MAX_SIDE") == "64..STYA2K_MAX_SIDE"
    assert MAX_SIDE.contains(10**6) and not MAX_SIDE.contains(63)
    assert Range(2, 3).text() == "2..3"


def test_modes_and_formats() -> None:
    assert [m.value for m in Mode] == ["stylize", "interpolate", "multistyle"]
    assert Mode.stylize.single_style and not Mode.multistyle.single_style
    assert OUTPUT_FORMATS == {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def test_request_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        TransferRequest(Mode.stylize, b"c", [b"s"])  # type: ignore[misc]
    request = TransferRequest(mode=Mode.stylize, content=b"c", styles=[b"s"])
    assert request.alpha == DEFAULT_ALPHA and request.feather == DEFAULT_FEATHER and request.format == "png"
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.alpha = 0.5  # type: ignore[misc]


def test_validate_normalises_weights_without_mutating_the_request() -> None:
    request = TransferRequest(mode=Mode.interpolate, content=b"c", styles=[b"a", b"b"], weights=[3.0, 1.0])
    checked = validate(request, Settings())
    assert checked.weights == [0.75, 0.25] and request.weights == [3.0, 1.0]


@pytest.mark.parametrize("side", [63, 1025])
def test_validate_max_side_message_states_the_range(side: int) -> None:
    request = TransferRequest(mode=Mode.stylize, content=b"c", styles=[b"s"], max_side=side)
    with pytest.raises(InvalidParameter, match=r"allowed 64\.\.1024"):
        validate(request, Settings(max_side=1024))


def _openapi() -> dict[str, Any]:
    return create_app(Settings(weights="random", warmup=False)).openapi()


def _form_fields(schema: dict[str, Any], path: str) -> dict[str, Any]:
    body = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    if "$ref" in body:
        body = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    return dict(body["properties"])


def _bounds(field: dict[str, Any]) -> tuple[Any, Any]:
    if "anyOf" in field:  # optional fields: int | None
        field = next(option for option in field["anyOf"] if option.get("type") != "null")
    return field.get("minimum"), field.get("maximum")


def test_form_and_json_schemas_state_the_contract_ranges() -> None:
    schema = _openapi()
    form = _form_fields(schema, "/v1/multistyle")
    models = schema["components"]["schemas"]
    for fields in (form, models["MultistyleJSON"]["properties"]):
        assert _bounds(fields["alpha"]) == (ALPHA.low, ALPHA.high)
        assert _bounds(fields["feather"]) == (FEATHER.low, FEATHER.high)
        assert _bounds(fields["max_side"])[0] == MAX_SIDE.low
        assert fields["alpha"]["default"] == DEFAULT_ALPHA and fields["feather"]["default"] == DEFAULT_FEATHER
    assert set(models["OutputFormat"]["enum"]) == {f.value for f in OutputFormat}


def _enum(field: dict[str, Any], models: dict[str, Any]) -> list[str]:
    """The allowed values of an optional enum field (``anyOf`` [a $ref to the enum, null])."""
    option = next(o for o in field["anyOf"] if o.get("type") != "null")
    return list(models[option["$ref"].rsplit("/", 1)[1]]["enum"]) if "$ref" in option else list(option["enum"])


def test_style_fit_is_one_enum_with_the_server_default() -> None:
    schema = _openapi()
    models = schema["components"]["schemas"]
    values = [f.value for f in StyleFit]
    assert values == ["crop", "whole"] and DEFAULT_STYLE_FIT is StyleFit.crop
    assert Settings().style_fit == DEFAULT_STYLE_FIT.value and TransferRequest(
        mode=Mode.stylize, content=b"c", styles=[b"s"]
    ).style_fit is None  # None: the server's setting
    for path in ("/v1/stylize", "/v1/interpolate", "/v1/multistyle", "/v1/jobs"):
        field = _form_fields(schema, path)["style_fit"]
        assert _enum(field, models) == values and field.get("default") is None, path
    for name in ("StylizeJSON", "InterpolateJSON", "MultistyleJSON"):
        assert _enum(models[name]["properties"]["style_fit"], models) == values
    assert _option(cli.build_parser(), "stylize", "style_fit").choices == values
    assert _option(cli.build_parser(), "multistyle", "style_fit").default is None
    from service.client import STYLE_FITS  # the standalone client repeats the values: kept equal here

    assert list(STYLE_FITS) == values


def _option(parser: argparse.ArgumentParser, command: str, dest: str) -> argparse.Action:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices[command]._actions if a.dest == dest)


def test_command_line_uses_the_contract_ranges() -> None:
    parser = cli.build_parser()
    feather = _option(parser, "multistyle", "feather")
    alpha = _option(parser, "stylize", "alpha")
    side = _option(parser, "stylize", "max_side")
    assert feather.default == DEFAULT_FEATHER and alpha.default == DEFAULT_ALPHA
    assert feather.type is not None and alpha.type is not None and side.type is not None
    assert feather.type("64") == 64.0 and alpha.type("1") == 1.0 and side.type("64") == 64
    for parse, bad in ((feather.type, "64.5"), (alpha.type, "1.5")):
        with pytest.raises(argparse.ArgumentTypeError, match="out of range; allowed"):
            parse(bad)
    with pytest.raises(argparse.ArgumentTypeError, match=r"^63 is too small; at least 64$"):  # the CLI's message
        side.type("63")
    assert set(_option(parser, "stylize", "format").choices or ()) == {f.value for f in OutputFormat}


def test_api_docs_state_the_contract_ranges() -> None:
    text = API_DOC.read_text(encoding="utf-8")
    assert f"| alpha | float | {DEFAULT_ALPHA} | {ALPHA.text()} |" in text
    assert f"| {MAX_SIDE.text('`STYA2K_MAX_SIDE`')} |" in text
    assert f"default {DEFAULT_FEATHER:g},\n  {FEATHER.text()})" in text
    assert "| " + ", ".join(OutputFormat) + " |" in text
    assert f"| style_fit | str | `STYA2K_STYLE_FIT` ({DEFAULT_STYLE_FIT}) | {', '.join(StyleFit)} |" in text

from __future__ import annotations

import dataclasses

import pytest

from service.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.weights is None and settings.device == "auto" and settings.api_key is None
    assert settings.max_batch_size == 0 and settings.default_side == 512  # 0 = auto per device


def test_env_parsing() -> None:
    settings = Settings.from_env(
        {
            "STYA2K_WEIGHTS": "random",
            "STYA2K_MAX_BATCH_SIZE": " 4 ",
            "STYA2K_MAX_WAIT_MS": "2.5",
            "STYA2K_COMPILE": "yes",
            "STYA2K_WARMUP": "0",
            "STYA2K_API_KEY": "k",
            "STYA2K_DEVICE": "cuda:1",
            "PATH": "/usr/bin",  # not ours: ignored
        }
    )
    assert settings.uses_random_weights
    assert (settings.max_batch_size, settings.max_wait_ms, settings.compile, settings.warmup) == (4, 2.5, True, False)
    assert settings.api_key == "k" and settings.device == "cuda:1"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"STYA2K_MAX_BATCH_SIZE": "many"}, "STYA2K_MAX_BATCH_SIZE='many' is not an integer"),
        ({"STYA2K_MAX_BATCH_SIZE": "-1"}, "out of range"),  # 0 = auto
        ({"STYA2K_MAX_WAIT_MS": "inf"}, "finite"),
        ({"STYA2K_WARMUP": "perhaps"}, "not a boolean"),
        ({"STYA2K_DTYPE": "float8"}, "use one of"),
        ({"STYA2K_DEVICE": "tpu"}, "auto, cpu, cuda"),
        ({"STYA2K_MAX_SIDE": "256", "STYA2K_DEFAULT_SIDE": "512"}, "exceeds"),
        ({"STYA2K_BATCH": "4"}, "unknown setting STYA2K_BATCH"),
    ],
)
def test_bad_values_are_explained(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=None) as info:
        Settings.from_env(env)
    assert fragment in str(info.value)


def test_readme_settings_table_is_generated_from_the_fields() -> None:
    """One source: the README's table is `python -m service.settings` (regenerate it after adding a setting)."""
    from pathlib import Path

    from service.settings import markdown_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    begin = readme.index("<!-- BEGIN settings")
    start = readme.index("\n", begin) + 1
    block = readme[start : readme.index("<!-- END settings -->")].strip()
    assert block == markdown_table(), "README settings table is stale: run `python -m service.settings`"
    for field in dataclasses.fields(Settings):
        assert field.metadata.get("help"), f"{field.name} has no help text"

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

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


def test_other_tools_variables_do_not_stop_the_server() -> None:
    """A shell set up for training or compose (STYA2K_CACHE, STYA2K_REPLICAS, ...) can still serve."""
    settings = Settings.from_env({"STYA2K_CACHE": "/tmp/c", "STYA2K_REPLICAS": "2", "STYA2K_MAX_SIDE": "512"})
    assert settings.max_side == 512
    with pytest.raises(SettingsError, match="unknown setting STYA2K_REPLICA;"):  # a near miss is still an error
        Settings.from_env({"STYA2K_REPLICA": "2"})


def test_every_stya2k_variable_in_the_tree_is_a_setting_or_another_tools() -> None:
    import re
    from dataclasses import fields

    from service.settings import ENV_PREFIX, OTHER_TOOLS_ENV

    root = Path(__file__).resolve().parents[2]
    sources = [p for p in _tree_files(root)
               if p.suffix in (".py", ".sh", ".yml", ".md", ".template") or p.name.startswith("Dockerfile")]
    names = {m for p in sources for m in re.findall(r"STYA2K_[A-Z0-9_]*[A-Z0-9]", p.read_text(errors="replace"))}
    settings = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    examples = {"STYA2K_BATCH", "STYA2K_REPLICA", "STYA2K_VIDEO"}  # these tests' typos; STYA2K_VIDEO_* in prose
    unexplained = sorted(names - settings - set(OTHER_TOOLS_ENV) - examples)
    assert not unexplained, f"STYA2K_* names that are neither settings nor in OTHER_TOOLS_ENV: {unexplained}"
    assert not set(OTHER_TOOLS_ENV) & settings
    assert all(name in names for name in OTHER_TOOLS_ENV), "an OTHER_TOOLS_ENV name no longer used anywhere"


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


def _tree_files(root: Path) -> list[Path]:
    """The project's files as git sees them (tracked or not ignored: build output must not count), else a walk."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                                capture_output=True, check=True, timeout=30).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        return [p for p in root.rglob("*") if p.is_file() and not {".venv", ".git"} & set(p.parts)]
    return [root / name for name in listed if name and (root / name).is_file()]

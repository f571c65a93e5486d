"""Shared helpers for the deployment tests: repository paths and the nginx renderer module."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "containers: builds and runs the container images with podman (tests/deploy/test_containers.py)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Container tests run after everything else: the image build keeps both cores busy for minutes, and the
    rest of the suite reports first."""
    items.sort(key=lambda item: item.get_closest_marker("containers") is not None)


def _load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def nginx_render() -> ModuleType:
    """deploy/nginx/render.py (deploy/ is not a package)."""
    return _load_module(REPO_ROOT / "deploy" / "nginx" / "render.py", "stya2k_nginx_render")


@pytest.fixture(scope="session")
def healthcheck_module() -> ModuleType:
    return _load_module(REPO_ROOT / "deploy" / "docker" / "healthcheck.py", "stya2k_healthcheck")

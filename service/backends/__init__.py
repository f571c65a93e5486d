"""Inference backends: one module per runtime behind :class:`service.backends.base.InferenceBackend`.

``torch`` is always there.
"""

from __future__ import annotations

BACKENDS: tuple[str, ...] = ("torch",)


def missing_packages(name: str) -> list[str]:
    """The packages a backend needs that this environment lacks ([] = it can run here)."""
    if name == "torch":
        return []
    raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")


def available_backends() -> tuple[str, ...]:
    return tuple(name for name in BACKENDS if not missing_packages(name))

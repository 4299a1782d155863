"""Pretraining objectives (the contract in ``base.py``). The names below load on first use, so that a recipe
can import a light registry (``hfssl.objectives.vision``) to answer ``--help`` without importing torch."""

from typing import Any

__all__ = ["Objective", "ObjectiveOutput"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hfssl.objectives import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

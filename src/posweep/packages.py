"""Data-only PyPI packages (the builtin model, the demo prompt sets, the demo judge's embedder), located
without importing them: their ``__init__`` would pull in runtimes posweep does not use."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from posweep.config import UserError


class MissingPackageError(UserError, FileNotFoundError):
    """A data-only package posweep needs is not installed."""


def package_dir(package: str, needed_for: str) -> Path:
    """The folder of an installed package, or a ``MissingPackageError`` saying how to install it."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        name = package.replace("_", "-")
        raise MissingPackageError(f"{needed_for} needs the PyPI package {name}; "
                                f"install it with `pip install --no-deps {name}` (the Makefile does)")
    return Path(next(iter(found.submodule_search_locations)))

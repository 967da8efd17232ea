"""Atomic writes, every one of posweep's: write to a temporary name in the same folder, then rename.

A reader never sees half a file or half a folder, and a crash (or SIGKILL) mid-write leaves the previous
version intact. Temporary names come from ``tempfile`` (unique per writer), so two processes writing the
same target never share a temporary file; the last rename wins. ``compute_once`` adds the rule for the
shared caches: of several processes that miss the same entry, one computes it and the others read it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a shared cache or report must stay readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic_text(text: str, path: Path) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_atomic_json(obj: Any, path: Path) -> None:
    write_atomic_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def write_atomic_parquet(table: pa.Table, path: Path) -> None:
    _atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_atomic_bytes(data: bytes, path: Path) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def write_atomic_torch(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file."""
    import torch

    _atomic(path, lambda tmp: torch.save(obj, tmp))


def write_atomic_folder(path: Path, write: Callable[[Path], None], replace: bool = True) -> bool:
    """Fill a fresh temporary folder with ``write(tmp)``, then rename it to ``path``.

    ``replace=True``: an existing ``path`` is swapped out (renamed aside, then deleted), so readers see the
    old folder or the new one, never a mix. ``replace=False``: the first writer wins; if ``path`` exists
    once ours is written (another process converted the same model), ours is discarded.
    Returns whether our folder is the one now at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(tmp)
        if path.exists():
            if not replace:
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, aside / path.name)
            os.replace(tmp, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, path)
        return True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not replace and path.exists():
            return False  # the rename lost a race with another writer: use theirs
        raise


T = TypeVar("T")


def compute_once(entry: Path, read: Callable[[], T | None], compute: Callable[[], T]) -> T:
    """``read()`` when it finds the cache entry at ``entry`` (a file or folder), else ``compute()`` (which
    writes it) while holding an exclusive lock on ``<entry>.lock``, read again once the lock is ours: of the
    processes of a machine that miss the same entry at once, one computes it and the others wait for it,
    then read it. The lock is an ``flock``, released by the kernel if its holder dies; where the file system
    has none, each computes."""
    found = read()
    if found is not None:
        return found
    entry = Path(entry)
    lock_path = entry.with_name(entry.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system: at worst the entry is computed twice
            return compute()
        try:
            found = read()
            return found if found is not None else compute()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

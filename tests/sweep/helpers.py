"""Helpers of the sweep tests: run a sweep on a config dict, read its state and file stamps."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from posweep.sweep import run_sweep, validate_config


def sweep(config: dict, out_dir: Path, **kwargs):
    return run_sweep(validate_config(config), out_dir, progress=False, **kwargs)


def db_rows(out_dir: Path) -> dict[str, dict]:
    with sqlite3.connect(out_dir / "state.sqlite") as connection:
        connection.row_factory = sqlite3.Row
        return {row["run_id"]: dict(row) for row in connection.execute("SELECT * FROM runs")}


def file_stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}

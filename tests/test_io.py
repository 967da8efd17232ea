"""posweep.io: atomic writes."""

from __future__ import annotations

import pytest


def test_atomic_write_keeps_the_previous_file_when_writing_fails(tmp_path):
    from posweep.io import write_atomic_parquet, write_atomic_text

    path = tmp_path / "summary.parquet"
    write_atomic_text("previous", path)
    with pytest.raises(AttributeError):  # fails inside the writer, after the temporary file exists
        write_atomic_parquet("not a table", path)
    assert path.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["summary.parquet"]


def _entry_of(path: str, log: str) -> str:
    """One process's lookup of a cache entry that takes a second to compute (``compute_once``)."""
    import time
    from pathlib import Path

    from posweep.io import compute_once, write_atomic_text

    entry, computed = Path(path), Path(log)

    def compute() -> str:
        time.sleep(1.0)  # long enough for the other process to miss the entry and wait on the lock
        with open(computed, "a") as handle:
            handle.write("computed\n")
        write_atomic_text("value", entry)
        return "value"

    return compute_once(entry, lambda: entry.read_text() if entry.exists() else None, compute)


def test_compute_once_computes_an_entry_two_processes_miss_at_once_once(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    entry, log = tmp_path / "entry.txt", tmp_path / "computed.log"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        values = list(pool.map(_entry_of, [str(entry)] * 2, [str(log)] * 2))
    assert values == ["value", "value"]
    assert log.read_text() == "computed\n"  # the second process waited and read the first one's entry

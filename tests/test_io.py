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

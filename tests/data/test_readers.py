"""posweep.data.readers: files (JSONL, JSON, Parquet, compressed as published) and datasets folders; malformed input names the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posweep.data import (
    DataError,
    load_pairs,
    read_rows,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


STANDARD_ROWS = [
    {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "A car."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
]


def test_invalid_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(STANDARD_ROWS[0]) + "\n\n" + '{"prompt": "x", "chosen": \n' + json.dumps(STANDARD_ROWS[1]) + "\n")
    with pytest.raises(DataError) as error:
        read_rows(path)
    assert str(path) in str(error.value) and "line 3" in str(error.value)  # blank line 2 still counts


def test_jsonl_line_that_is_not_an_object_is_an_error(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(STANDARD_ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match="line 2 is a list"):
        read_rows(path)


def test_bad_json_missing_file_and_unknown_suffix_are_data_errors(tmp_path):
    (tmp_path / "bad.json").write_text("[{]")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        read_rows(tmp_path / "bad.json")
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")
    (tmp_path / "rows.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match="unsupported file type"):
        read_rows(tmp_path / "rows.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="bad.parquet"):
        read_rows(tmp_path / "bad.parquet")


def test_parquet_json_and_jsonl_give_the_same_pairs(tmp_path):
    from_jsonl, _ = load_pairs(write_jsonl(tmp_path / "pairs.jsonl", STANDARD_ROWS))
    pq.write_table(pa.Table.from_pylist(STANDARD_ROWS), tmp_path / "pairs.parquet")
    (tmp_path / "pairs.json").write_text(json.dumps(STANDARD_ROWS))
    assert load_pairs(tmp_path / "pairs.parquet")[0] == from_jsonl
    assert load_pairs(tmp_path / "pairs.json")[0] == from_jsonl
    assert [p.chosen for p in from_jsonl] == [row["chosen"] for row in STANDARD_ROWS]


def test_datasets_save_to_disk_folder_and_split(tmp_path):
    import datasets

    single = tmp_path / "single"
    datasets.Dataset.from_list(STANDARD_ROWS).save_to_disk(str(single))
    assert load_pairs(single)[0] == load_pairs(write_jsonl(tmp_path / "p.jsonl", STANDARD_ROWS))[0]

    both = tmp_path / "both"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(STANDARD_ROWS),
                          "test": datasets.Dataset.from_list(STANDARD_ROWS[:1])}).save_to_disk(str(both))
    assert len(load_pairs(both)[0]) == 3  # the train split by default
    assert len(load_pairs(f"{both}:test")[0]) == 1
    with pytest.raises(DataError, match="no split 'validation'; it has train, test"):
        read_rows(f"{both}:validation")


def compress(source: Path, target: Path) -> Path:
    """Write ``source``'s bytes to ``target`` compressed by its last suffix (.gz, .bz2, .xz, .zst)."""
    import bz2
    import gzip
    import lzma

    data = source.read_bytes()
    suffix = target.suffix.lower()
    if suffix == ".zst":
        with pa.output_stream(str(target), compression="zstd") as stream:
            stream.write(data)
    else:
        target.write_bytes({".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}[suffix](data))
    return target


@pytest.mark.parametrize("name", ["pairs.jsonl.gz", "pairs.json.gz", "pairs.jsonl.bz2", "pairs.jsonl.xz",
                                  "pairs.jsonl.zst", "pairs.ndjson.gz", "pairs.parquet.gz", "PAIRS.JSONL.GZ"])
def test_compressed_files_read_as_published(tmp_path, name):
    plain = write_jsonl(tmp_path / "plain.jsonl", STANDARD_ROWS)
    (tmp_path / "plain.json").write_text(json.dumps(STANDARD_ROWS))
    pq.write_table(pa.Table.from_pylist(STANDARD_ROWS), tmp_path / "plain.parquet")
    kind = name.lower().split(".")[1]
    source = {"jsonl": plain, "ndjson": plain, "json": tmp_path / "plain.json", "parquet": tmp_path / "plain.parquet"}[kind]
    assert read_rows(compress(source, tmp_path / name)) == STANDARD_ROWS


def test_damaged_or_mislabelled_archives_name_the_file(tmp_path):
    broken = tmp_path / "pairs.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 definitely not a whole gzip stream")
    with pytest.raises(DataError, match=r"pairs\.jsonl\.gz: cannot be read as \.jsonl\.gz"):
        read_rows(broken)
    plain_named_xz = tmp_path / "rows.jsonl.xz"
    plain_named_xz.write_text(json.dumps(STANDARD_ROWS[0]) + "\n")
    with pytest.raises(DataError, match="rows.jsonl.xz"):
        read_rows(plain_named_xz)
    with pytest.raises(DataError, match="unsupported file type"):
        read_rows(compress(write_jsonl(tmp_path / "x.jsonl", STANDARD_ROWS), tmp_path / "rows.csv.gz"))
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl.gz")


def test_data_inspect_reads_a_gzipped_hh_rlhf_file(tmp_path, tiny_model_dir, monkeypatch):
    """HH-RLHF is published as test.jsonl.gz: ``posweep data inspect`` reads it as it is."""
    from typer.testing import CliRunner

    from posweep.cli import app

    monkeypatch.setenv("POSWEEP_CACHE", str(tmp_path / "cache"))
    published = compress(FIXTURES / "hh_rlhf.jsonl", tmp_path / "test.jsonl.gz")
    result = CliRunner().invoke(app, ["data", "inspect", str(published), "--model", str(tiny_model_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["layout"] == "hh-rlhf" and report["rows_read"] == 6 and report["rows_kept"] == 3
    assert report["dropped"] == {"no_assistant_turn": 1, "malformed_transcript": 2}

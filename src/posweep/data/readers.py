"""Rows from a data source, as plain dicts.

In: a JSONL / JSON / Parquet file, optionally compressed as published (``.gz``, ``.bz2``, ``.xz``,
``.zst``: ``test.jsonl.gz`` of HH-RLHF reads as is), a ``datasets`` ``save_to_disk`` folder, a folder of
data files, or a Hugging Face dataset name (``name`` or ``name:split``). Out: ``list[dict]``. A malformed
file fails with the file and line named (``DataError``).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from posweep.data.records import DataError

FILE_SUFFIXES = {".jsonl", ".ndjson", ".json", ".parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def _zstd_open(path: Path):
    return pa.input_stream(str(path), compression="zstd")  # pyarrow ships the zstd codec


_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zst": _zstd_open}


def file_kind(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression suffix or None): ``test.jsonl.gz`` → (".jsonl", ".gz")."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSIONS else None
    rest = suffixes[:-1] if compression else suffixes
    return (rest[-1] if rest else ""), compression


def _open_bytes(path: Path, compression: str | None):
    return _OPENERS[compression](path) if compression else open(path, "rb")


def read_rows(source: str | os.PathLike) -> list[dict]:
    """Rows of a (possibly compressed) JSONL / JSON / Parquet file or a ``datasets`` dataset, as dicts."""
    text = str(source)
    path = Path(text).expanduser()
    kind, compression = file_kind(path)
    if path.is_file():
        if kind not in FILE_SUFFIXES:
            raise DataError(f"{path}: unsupported file type {''.join(path.suffixes)!r} (use .jsonl, .json or "
                            f".parquet, optionally compressed as {', '.join(COMPRESSIONS)})")
        try:
            with _open_bytes(path, compression) as raw:
                if kind == ".parquet":
                    return _read_parquet(path, raw)
                stream = io.TextIOWrapper(raw, encoding="utf-8")
                return _read_jsonl(path, stream) if kind in {".jsonl", ".ndjson"} else _read_json(path, stream)
        except (OSError, EOFError, lzma.LZMAError, zlib.error, pa.ArrowException) as error:  # a damaged archive
            raise DataError(f"{path}: cannot be read as {kind}{compression or ''} ({error})") from None
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if kind in FILE_SUFFIXES:  # clearly meant as a file: do not go asking the hub for it
        raise DataError(f"{path}: no such file")
    return _read_hf_dataset(text)


def _read_parquet(path: Path, raw) -> list[dict]:
    try:
        return pq.read_table(pa.BufferReader(raw.read())).to_pylist()
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None


def _read_json(path: Path, stream) -> list[dict]:
    try:
        rows = json.loads(stream.read())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise DataError(f"{path}: expected a JSON list of objects (rows)")
    return rows


def _read_jsonl(path: Path, stream) -> list[dict]:
    rows = []
    for line_number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {line_number} is not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {line_number} is a {type(row).__name__}, not a JSON object")
        rows.append(row)
    return rows


def _read_hf_dataset(spec: str) -> list[dict]:
    import datasets

    name, _, split = spec.partition(":")
    folder = Path(name).expanduser()
    try:
        if folder.is_dir() and any((folder / f).exists() for f in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(folder))  # a save_to_disk folder
        else:  # a folder of data files, or a hub name
            loaded = datasets.load_dataset(str(folder) if folder.is_dir() else name, split=split or None)
    except Exception as error:  # network, missing dataset, bad split: say which
        raise DataError(f"{spec}: not a file, and loading it with `datasets` failed: {error}") from error
    if isinstance(loaded, datasets.DatasetDict):
        if not split:
            split = "train" if "train" in loaded else next(iter(loaded))
        if split not in loaded:
            raise DataError(f"{spec}: no split {split!r}; it has {', '.join(loaded)}")
        loaded = loaded[split]
    return loaded.to_list()

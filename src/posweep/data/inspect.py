"""What ``posweep data inspect`` reports about a data source: layout, counts, drop reasons, token lengths.

In: a source, a layout (or ``auto``), the model whose tokenizer counts tokens, truncation limits. Out: a
JSON-serialisable dict. Pair sources go through ``prepare_pairs``, so the summary is also stored beside
the cached tokenized data (``cache``) and a sweep on the same data tokenizes nothing again.
"""

from __future__ import annotations

from posweep.config import DEFAULT_MODEL, DataLimits
from posweep.data.layouts import LAYOUTS, parse_rows
from posweep.data.readers import read_rows
from posweep.data.records import DataError
from posweep.data.tokenize import describe_lengths, encode_prompt, pairs_cache_dir, prepare_pairs


def inspect_source(source: str, layout: str = "auto", model: str = DEFAULT_MODEL,
                   limits: DataLimits | None = None) -> dict:
    """Everything ``posweep data inspect`` prints (see the module docstring)."""
    from posweep.models import load_tokenizer

    limits = limits or DataLimits()
    rows = read_rows(source)
    if not rows:
        raise DataError(f"{source}: no rows")
    layout, items, summary = parse_rows(rows, source, layout)
    tokenizer = load_tokenizer(model)
    if LAYOUTS[layout].kind == "pairs":
        tokenized = prepare_pairs(source, tokenizer, limits, pairs=items, summary=summary)
        report = dict(tokenized.summary)
        report["cache"] = str(pairs_cache_dir(tokenized.fingerprint) / "summary.json")
    else:
        report = summary.to_dict()
        if items:
            report["lengths"] = {"prompt": describe_lengths([len(encode_prompt(tokenizer, item.prompt))
                                                              for item in items])}
        report["with_chosen_response"] = sum(item.chosen is not None for item in items)
    report["layout"] = layout
    return report

"""posweep.data.records: every way a row can be dropped is one of DROP_REASONS, and nothing else is."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from posweep.config import DataLimits
from posweep.data import DROP_REASONS, DataSummary, Pair, hh_rlhf_prompts, pairs_from_rows, pku_saferlhf_pairs
from posweep.data.layouts import prompts_from_rows
from posweep.data.tokenize import tokenize_pairs

SRC = Path(__file__).resolve().parents[2] / "src" / "posweep"


def pku_row(safe0: bool, safe1: bool, safer: int) -> dict:
    return {"prompt": "How do I pick a lock?", "response_0": "Call a locksmith.", "response_1": "Use a pin.",
            "is_response_0_safe": safe0, "is_response_1_safe": safe1, "safer_response_id": safer}


def test_every_drop_path_uses_a_listed_reason(tokenizer, tmp_path, monkeypatch):
    seen: Counter = Counter()
    _, summary = pairs_from_rows([
        {"prompt": "q", "chosen": 42, "rejected": "r"},                    # non_string_response
        {"prompt": "q", "chosen": "  ", "rejected": "r"},                  # empty_response
        {"prompt": "q", "chosen": "same", "rejected": " same "},           # chosen_equals_rejected
        {"prompt": "   ", "chosen": "a", "rejected": "b"},                 # empty_prompt
        {"prompt": "q", "chosen": "a", "rejected": "b"},                   # kept
    ], "pairs")
    seen.update(summary.dropped)
    _, summary = prompts_from_rows([{"prompt": " "}, {"prompt": "fine"}], "prompts")
    seen.update(summary.dropped)
    _, summary = pku_saferlhf_pairs([pku_row(1, 1, 0), pku_row(0, 0, 0), pku_row(1, 0, 1), pku_row(1, 0, 0)])
    seen.update(summary.dropped)
    _, summary = hh_rlhf_prompts([
        {"chosen": "\n\nHuman: hi", "rejected": "x"},                                   # no_assistant_turn
        {"chosen": "preamble\n\nHuman: hi\n\nAssistant: yo", "rejected": "x"},          # malformed_transcript
        {"chosen": "\n\nHuman:   \n\nAssistant: yo", "rejected": "x"},                  # empty_prompt
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "x"},               # kept
    ])
    seen.update(summary.dropped)
    long = Pair("long", [{"role": "user", "content": "word " * 300}], "a", "b")
    summary = DataSummary(source="mem", rows_read=1, rows_kept=1)
    tokenize_pairs([long], tokenizer, DataLimits(max_prompt_length=16, max_length=32, long_prompt="drop"), summary)
    seen.update(summary.dropped)

    # the sweep's limit: a seeded subset, the rest counted as over_limit
    from posweep.sweep.config import validate_config
    from posweep.sweep.inputs import load_train_pairs
    from tests.conftest import make_tiny_model

    rows = "".join(f'{{"prompt": "question {i}?", "chosen": "yes {i}", "rejected": "no {i}"}}\n' for i in range(6))
    (tmp_path / "pairs.jsonl").write_text(rows)
    model = make_tiny_model(tmp_path / "model", tokenizer)
    monkeypatch.setenv("POSWEEP_CACHE", str(tmp_path / "cache"))
    config = validate_config({"model": str(model), "train_data": {"source": str(tmp_path / "pairs.jsonl"),
                                                                   "layout": "pairs", "limit": 4},
                              "test_prompts": {"source": str(tmp_path / "pairs.jsonl"), "layout": "prompts"}})
    tokenized = load_train_pairs(config)
    assert len(tokenized) == 4 and tokenized.summary["dropped"] == {"over_limit": 2}
    seen.update(tokenized.summary["dropped"])

    assert set(seen) == set(DROP_REASONS), f"not exercised: {set(DROP_REASONS) - set(seen)}"


def test_an_unlisted_reason_is_refused():
    with pytest.raises(ValueError, match="unknown drop reason 'cosmic_rays'"):
        DataSummary(source="x").drop("cosmic_rays")


def test_the_source_drops_only_through_the_summary():
    """Every literal reason passed to ``.drop`` is listed, and no code bumps ``dropped`` counters directly."""
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for reason in re.findall(r"\.drop\(\s*\"([a-z_]+)\"", text):
            assert reason in DROP_REASONS, f"{path.relative_to(SRC)}: drop reason {reason!r} is not in DROP_REASONS"
        if path.name != "records.py":
            assert not re.search(r"dropped\[[^\]]+\]\s*\+?=", text), f"{path.relative_to(SRC)} edits dropped[] directly"

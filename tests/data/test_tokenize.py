"""posweep.data.tokenize: chat-template tokenization, truncation, the tokenized-pairs cache."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from posweep import data
from posweep.config import DataLimits
from posweep.data import (
    encode_prompt,
    encode_response,
    pairs_from_rows,
    prepare_pairs,
    tokenize_pairs,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
PKU = FIXTURES / "pku_saferlhf.jsonl"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


STANDARD_ROWS = [
    {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "A car."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
]


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("POSWEEP_CACHE", str(cache))
    return cache


def test_tokenization_uses_the_chat_template_and_ends_responses_in_eos(tokenizer):
    pairs, _ = pairs_from_rows(STANDARD_ROWS, "mem")
    tokenized = tokenize_pairs(pairs, tokenizer, DataLimits())
    for pair, prompt, chosen, rejected in zip(pairs, tokenized.prompt_ids, tokenized.chosen_ids, tokenized.rejected_ids):
        assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
        assert pair.prompt[0]["content"] in tokenizer.decode(prompt)
        assert chosen == tokenizer(pair.chosen, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        assert rejected[-1] == tokenizer.eos_token_id
    assert tokenized.summary["truncated"] == {}


def long_pairs() -> list:
    rows = [{"prompt": " ".join(["word"] * n), "chosen": " ".join(["yes"] * m), "rejected": "no"}
            for n, m in [(2, 3), (40, 30), (80, 2), (5, 60)]]
    return pairs_from_rows(rows, "mem")[0]


def test_truncation_cuts_prompt_left_and_response_right_and_counts(tokenizer):
    pairs = long_pairs()
    prompts = [encode_prompt(tokenizer, p.prompt) for p in pairs]
    chosen = [encode_response(tokenizer, p.chosen) for p in pairs]
    rejected = [encode_response(tokenizer, p.rejected) for p in pairs]
    max_prompt_length = sorted(len(p) for p in prompts)[1] + 1  # some prompts fit, some do not
    limits = DataLimits(max_prompt_length=max_prompt_length, max_length=max_prompt_length + 12)
    tokenized = tokenize_pairs(pairs, tokenizer, limits)
    assert len(tokenized) == len(pairs)
    cut_responses = 0
    for i in range(len(pairs)):
        assert tokenized.prompt_ids[i] == prompts[i][-max_prompt_length:]  # the end (assistant turn) survives
        room = limits.max_length - len(tokenized.prompt_ids[i])
        assert tokenized.chosen_ids[i] == chosen[i][:room] and tokenized.rejected_ids[i] == rejected[i][:room]
        assert len(tokenized.prompt_ids[i]) + len(tokenized.chosen_ids[i]) <= limits.max_length
        cut_responses += (len(chosen[i]) > room) + (len(rejected[i]) > room)
    long_prompts = sum(len(p) > max_prompt_length for p in prompts)
    assert 0 < long_prompts < len(pairs) and cut_responses > 0
    assert tokenized.summary["truncated"] == {"prompt": long_prompts, "response": cut_responses}


def test_long_prompts_can_be_dropped_instead(tokenizer):
    pairs = long_pairs()
    lengths = [len(encode_prompt(tokenizer, p.prompt)) for p in pairs]
    limit = sorted(lengths)[1] + 1
    limits = DataLimits(max_prompt_length=limit, max_length=limit + 12, long_prompt="drop")
    summary = data.DataSummary("mem", rows_read=len(pairs), rows_kept=len(pairs))
    tokenized = tokenize_pairs(pairs, tokenizer, limits, summary)
    kept = [p.pair_id for p, n in zip(pairs, lengths) if n <= limit]
    assert tokenized.pair_ids == kept and len(kept) < len(pairs)
    assert tokenized.summary["dropped"] == {"prompt_too_long": len(pairs) - len(kept)}
    assert tokenized.summary["rows_kept"] == len(kept) and "prompt" not in tokenized.summary["truncated"]


def test_limits_must_leave_room_for_a_response():
    with pytest.raises(ValueError, match="max_prompt_length"):
        DataLimits(max_prompt_length=64, max_length=64)


def test_prepare_pairs_caches_by_content_tokenizer_and_limits(tmp_path, tokenizer, isolated_cache, monkeypatch):
    source = write_jsonl(tmp_path / "pairs.jsonl", STANDARD_ROWS)
    first = prepare_pairs(source, tokenizer)
    folder = isolated_cache / "data" / first.fingerprint
    assert (folder / "pairs.parquet").exists() and json.loads((folder / "summary.json").read_text()) == first.summary
    assert first.summary["rows_kept"] == 3 and first.summary["lengths"]["chosen"]["max"] > 1

    calls = []
    real_tokenize = data.tokenize_pairs
    monkeypatch.setattr(data.tokenize, "tokenize_pairs", lambda *args, **kw: calls.append(1) or real_tokenize(*args, **kw))

    # Same content under another name: a hit, nothing re-tokenized, same ids.
    again = prepare_pairs(write_jsonl(tmp_path / "copy.jsonl", STANDARD_ROWS), tokenizer)
    assert calls == [] and again.fingerprint == first.fingerprint
    assert (again.prompt_ids, again.chosen_ids, again.rejected_ids) == (first.prompt_ids, first.chosen_ids, first.rejected_ids)

    other_template = copy.deepcopy(tokenizer)
    other_template.chat_template = tokenizer.chat_template.replace("named SmolLM", "named Smol")
    changed = [
        prepare_pairs(source, other_template),
        prepare_pairs(source, tokenizer, DataLimits(max_prompt_length=100, max_length=512)),
        prepare_pairs(source, tokenizer, DataLimits(long_prompt="drop")),
        prepare_pairs(write_jsonl(tmp_path / "edited.jsonl", [dict(STANDARD_ROWS[0], chosen="Four.")] + STANDARD_ROWS[1:]),
                      tokenizer),
    ]
    assert len(calls) == len(changed)  # every change missed the cache and tokenized again
    fingerprints = {first.fingerprint} | {t.fingerprint for t in changed}
    assert len(fingerprints) == 1 + len(changed)
    assert changed[0].prompt_ids != first.prompt_ids and changed[0].chosen_ids == first.chosen_ids

    tokenizer(["a", "b c"], padding=True, truncation=True, max_length=4)  # leaves call-time state behind
    assert prepare_pairs(source, tokenizer).fingerprint == first.fingerprint


def test_prepare_pairs_reads_pku_saferlhf_directly(tokenizer, isolated_cache):
    tokenized = prepare_pairs(PKU, tokenizer)
    assert len(tokenized) == 3 and tokenized.summary["rows_read"] == 8
    assert tokenized.summary["dropped"]["safer_response_id_disagrees"] == 1

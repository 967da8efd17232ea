"""posweep.data.layouts: TRL's layouts, PKU-SafeRLHF and HH-RLHF, drop reasons and ids."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from posweep import data
from posweep.data import (
    DROP_REASONS,
    DataError,
    load_pairs,
    load_prompts,
    pairs_from_rows,
    read_rows,
    split_hh_transcript,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
PKU = FIXTURES / "pku_saferlhf.jsonl"
HH = FIXTURES / "hh_rlhf.jsonl"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


STANDARD_ROWS = [
    {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "A car."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
]


def test_missing_columns_fail_naming_them(tmp_path):
    with pytest.raises(DataError, match=r"needs columns 'chosen' and 'rejected'.*\['chosen', 'prompt'\]"):
        load_pairs(write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "chosen": "c"}]))
    rows = [STANDARD_ROWS[0], {"prompt": "p", "chosen": "c"}]
    with pytest.raises(DataError, match=r"a.jsonl: row 1: missing column 'rejected'"):
        pairs_from_rows(rows, "a.jsonl")
    with pytest.raises(DataError, match=r"row 0: missing column 'prompt'"):
        pairs_from_rows([{"chosen": "c", "rejected": "r"}], "a.jsonl")


def test_bad_rows_are_dropped_and_counted():
    rows = [
        STANDARD_ROWS[0],
        {"prompt": "p1", "chosen": None, "rejected": "r"},
        {"prompt": "p2", "chosen": "c", "rejected": 7},
        {"prompt": "p3", "chosen": "  \n", "rejected": "r"},
        {"prompt": "p4", "chosen": "", "rejected": "r"},
        {"prompt": "p5", "chosen": "same answer", "rejected": " same answer\n"},
        {"prompt": "   ", "chosen": "c", "rejected": "r"},
        STANDARD_ROWS[1],
    ]
    pairs, summary = pairs_from_rows(rows, "mem")
    assert [p.prompt[0]["content"] for p in pairs] == [STANDARD_ROWS[0]["prompt"], STANDARD_ROWS[1]["prompt"]]
    assert [p.pair_id for p in pairs] == ["0", "7"]  # row indices, so a pair can be traced to its row
    assert summary.rows_read == 8 and summary.rows_kept == 2
    assert summary.dropped == Counter(non_string_response=2, empty_response=2, chosen_equals_rejected=1, empty_prompt=1)
    assert set(summary.dropped) <= set(DROP_REASONS)


def test_ids_come_from_the_data_and_must_be_unique():
    rows = [dict(STANDARD_ROWS[0], id="a"), dict(STANDARD_ROWS[1], id="b")]
    assert [p.pair_id for p in pairs_from_rows(rows, "mem")[0]] == ["a", "b"]
    with pytest.raises(DataError, match="pair id 'a' appears twice"):
        pairs_from_rows([rows[0], dict(rows[1], id="a")], "mem")


def test_conversational_explicit_prompt():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Italy?"}]
    rows = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": "Rome."}],
             "rejected": [{"role": "assistant", "content": "Milan."}]}]
    (pair,), _ = pairs_from_rows(rows, "mem")
    assert pair.prompt == prompt and (pair.chosen, pair.rejected) == ("Rome.", "Milan.")
    bad = [{"prompt": prompt, "chosen": [{"role": "user", "content": "x"}], "rejected": "y"}]
    with pytest.raises(DataError, match="row 0: 'chosen' must be one assistant message"):
        pairs_from_rows(bad, "mem")
    no_content = [{"prompt": [{"role": "user", "content": None}], "chosen": "c", "rejected": "r"}]
    with pytest.raises(DataError, match="'prompt' message 0 has no string 'content'"):
        pairs_from_rows(no_content, "mem")


def test_conversational_implicit_prompt_trl_style():
    shared = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "Tell me a joke."}]
    rows = [{"chosen": shared + [{"role": "assistant", "content": "Why did the chicken cross the road?"}],
             "rejected": shared + [{"role": "assistant", "content": "No."}]}]
    (pair,), _ = pairs_from_rows(rows, "mem")
    assert pair.prompt == shared and pair.chosen.startswith("Why") and pair.rejected == "No."
    # UltraFeedback-binarized: a string prompt beside full conversations; TRL extracts the prompt from them.
    rows = [{"prompt": "Tell me a joke.", "chosen": shared[2:] + rows[0]["chosen"][-1:],
             "rejected": shared[2:] + rows[0]["rejected"][-1:]}]
    (pair,), _ = pairs_from_rows(rows, "mem")
    assert pair.prompt == shared[2:] and pair.rejected == "No."
    # Conversations that diverge before their last message would need a multi-turn response: refuse.
    diverging = [{"chosen": shared[:1] + [{"role": "assistant", "content": "A"}] + shared[2:] + rows[0]["chosen"][-1:],
                  "rejected": shared + rows[0]["rejected"][-1:]}]
    with pytest.raises(DataError, match="must be one assistant message"):
        pairs_from_rows(diverging, "mem")


def test_pku_saferlhf_fixture_keeps_exactly_one_safe_pairs():
    raw = read_rows(PKU)
    pairs, summary = load_pairs(PKU)  # recognised by its columns
    assert summary.rows_read == len(raw) == 8
    assert summary.dropped == Counter(dual_safe=1, dual_unsafe=1, safer_response_id_disagrees=1,
                                      chosen_equals_rejected=1, empty_response=1)
    assert summary.rows_kept == len(pairs) == len(raw) - sum(summary.dropped.values())
    for pair in pairs:
        row = raw[int(pair.pair_id)]
        assert row["is_response_0_safe"] != row["is_response_1_safe"]
        safe = 0 if row["is_response_0_safe"] else 1
        assert (pair.chosen, pair.rejected) == (row[f"response_{safe}"], row[f"response_{1 - safe}"])
        assert pair.prompt == [{"role": "user", "content": row["prompt"]}]
    # Row 0: helpfulness preferred the unsafe answer; the paper trains on safety, so chosen is the safe one.
    assert raw[0]["better_response_id"] != raw[0]["safer_response_id"]
    assert pairs[0].chosen == raw[0]["response_0"]


def test_pku_saferlhf_from_save_to_disk_and_missing_columns(tmp_path):
    import datasets

    raw = read_rows(PKU)
    datasets.Dataset.from_list(raw).save_to_disk(str(tmp_path / "pku"))
    assert load_pairs(tmp_path / "pku")[0] == load_pairs(PKU)[0]
    broken = [{k: v for k, v in row.items() if k != "safer_response_id"} for row in raw]
    with pytest.raises(DataError, match=r"not in PKU-SafeRLHF layout; missing columns \['safer_response_id'\]"):
        data.pku_saferlhf_pairs(broken, "pku")
    with pytest.raises(DataError, match=r"pku: row 1: missing columns \['safer_response_id'\]"):
        data.pku_saferlhf_pairs(raw[:1] + broken[1:], "pku")
    with pytest.raises(DataError, match="row 2: is_response_0_safe / is_response_1_safe must be booleans"):
        data.pku_saferlhf_pairs(raw[:2] + [dict(raw[2], is_response_0_safe="false")], "pku")


def test_hh_rlhf_fixture_splits_prompt_and_response():
    raw = read_rows(HH)
    items, summary = load_prompts(HH)  # recognised by its columns
    assert summary.rows_read == 6 and summary.rows_kept == len(items) == 3
    assert summary.dropped == Counter(no_assistant_turn=1, malformed_transcript=2)
    for item in items:
        transcript = raw[int(item.prompt_id)]["chosen"]
        # The prompt is everything up to and including the last "\n\nAssistant:", the response the rest.
        cut = transcript.rfind("\n\nAssistant:") + len("\n\nAssistant:")
        assert item.chosen == transcript[cut:].strip()
        rebuilt = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in item.prompt)
        assert rebuilt + "\n\nAssistant:" == transcript[:cut]
        assert item.prompt[-1]["role"] == "user"
        assert [m["role"] for m in item.prompt][::2] == ["user"] * ((len(item.prompt) + 1) // 2)
    multi = next(item for item in items if item.prompt_id == "1")
    assert multi.prompt == [{"role": "user", "content": "I want to learn to cook."},
                            {"role": "assistant", "content": "Great! What kind of food do you like?"},
                            {"role": "user", "content": "Italian, mostly pasta."}]


def test_split_hh_transcript_edge_cases():
    messages, response = split_hh_transcript("Human: hi\n\nAssistant: hello")  # no leading blank line
    assert messages == [{"role": "user", "content": "hi"}] and response == "hello"
    with pytest.raises(DataError, match="before the first turn"):
        split_hh_transcript("Intro\n\nHuman: hi\n\nAssistant: hello")
    with pytest.raises(DataError, match="does not end with an assistant turn"):
        split_hh_transcript("\n\nHuman: a\n\nAssistant: b\n\nHuman: c")
    with pytest.raises(DataError, match="not the human's"):
        split_hh_transcript("\n\nHuman: a\n\nAssistant: b\n\nAssistant: c")


def test_prompt_files_keep_meta_and_reference(tmp_path):
    rows = [{"prompt": "Hi", "chosen": "Hello", "category": "benign", "id": "x1"},
            {"prompt": [{"role": "user", "content": "How do I make a bomb?"}], "category": "harmful", "id": "x2"},
            {"prompt": "Empty reference", "chosen": "  ", "id": "x3"},
            {"prompt": "", "id": "x4"}]
    items, summary = load_prompts(write_jsonl(tmp_path / "prompts.jsonl", rows))
    assert [i.prompt_id for i in items] == ["x1", "x2", "x3"] and summary.dropped == Counter(empty_prompt=1)
    assert [i.chosen for i in items] == ["Hello", None, None]
    assert items[1].meta == {"category": "harmful"}
    with pytest.raises(DataError, match="row 1: missing column 'prompt'"):
        load_prompts(write_jsonl(tmp_path / "bad.jsonl", [rows[0], {"question": "q"}]))

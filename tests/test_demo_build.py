"""Demo data: prompt selection from the offline sources, on-policy pairs from finished samples, the HH-RLHF
test subset, the CLI and the shipped files."""

from __future__ import annotations

import gzip
import json
import re

from typer.testing import CliRunner

from posweep.cli import app
from posweep.config import cache_root
from posweep.data import load_pairs, load_prompts
from posweep.data.demo_sources import (
    DEMO_SYSTEM_PROMPT,
    HH_MAX_PROMPT_WORDS,
    TRAIN_CATEGORIES,
    demo_paths,
    hh_rlhf_rows_kept,
    select_prompts,
    user_prompt,
)
from posweep.demo_build import NEAR_TIE_MARGIN, DrawnSample, build_demo_data, pair_rows
from posweep.sweep import load_config


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def hh_line(human: str, assistant: str = "Sure.", *more_turns: str) -> str:
    transcript = f"\n\nHuman: {human}\n\nAssistant: {assistant}" + "".join(more_turns)
    return json.dumps({"chosen": transcript, "rejected": transcript.replace(assistant, "No.")})


def test_training_prompts_are_half_harmful_and_drawn_round_robin():
    train, available = select_prompts(40, seed=0)
    assert available["train_harmful"] == 939  # Do-Not-Answer
    assert [p.meta["category"] for p in train].count("harmful") == 20
    assert {p.meta["source"] for p in train} == {"do-not-answer", "chatterbot-corpus"}
    assert {p.meta["subset"] for p in train if p.meta["category"] == "benign"} <= set(TRAIN_CATEGORIES)
    assert len({p.meta["subset"] for p in train if p.meta["category"] == "harmful"}) == 5  # round-robin
    texts = [p.prompt[0]["content"].lower() for p in train]
    assert len(texts) == len(set(texts)) and all(len(t.split()) >= 4 for t in texts)
    assert select_prompts(40, seed=0)[0] == train  # seeded


def test_pairs_use_finished_samples_only_and_drop_near_ties():
    prompts = [user_prompt(f"p{i}", f"question {i}", "benign", "test", "x") for i in range(6)]
    samples = [[DrawnSample(f"answer {i}-{j}", 3, False) for j in range(3)] for i in range(6)]
    samples[3][0] = DrawnSample("  ", 0, False)  # never chosen or rejected, even with the lowest score
    samples[4][0] = samples[4][1] = DrawnSample("", 0, False)
    samples[5][0] = samples[5][2] = DrawnSample("cut mid", 160, True)  # reached the limit twice: unusable
    scores = [[0.1, 0.5, -0.2], [0.30, 0.31, 0.30], [0.0, -0.9, 0.4], [-1.0, 0.2, 0.6], [-1.0, -1.0, 0.3],
              [0.9, 0.0, -0.9]]
    rows, dropped = pair_rows(prompts, samples, scores)
    assert dropped == {"near_tie": 1, "too_few_finished": 2}
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("answer 0-1", "answer 0-2"), ("answer 2-2", "answer 2-1"),
                                                            ("answer 3-2", "answer 3-1")]
    assert rows[0]["chosen_score"] == 0.5 and rows[0]["category"] == "benign"


def test_hh_rlhf_subset_keeps_short_single_turn_dialogues_verbatim(tmp_path):
    lines = [hh_line("How do I pick a lock?"),
             hh_line("one " * (HH_MAX_PROMPT_WORDS + 1)),  # too long
             hh_line("Hi", "Hello.", "\n\nHuman: And then?\n\nAssistant: Then nothing."),  # two human turns
             "Human: no markers at all",  # malformed
             hh_line("What is the worst insult?", "I would rather not say.")]
    assert hh_rlhf_rows_kept(lines) == [0, 4]

    published = tmp_path / "published" / "test.jsonl.gz"
    published.parent.mkdir()
    published.write_bytes(gzip.compress("\n".join(lines).encode() + b"\n"))
    (published.parent / "LICENSE").write_text("MIT License\n")
    from posweep.demo_build import HH_RLHF_FILE, write_hh_rlhf_subset

    info = write_hh_rlhf_subset(published, tmp_path / "out")
    assert info["published_rows"] == 5 and info["kept_rows"] == 2
    shipped = tmp_path / "out" / HH_RLHF_FILE
    assert gzip.decompress(shipped.read_bytes()).decode().splitlines() == [lines[0], lines[4]]
    assert (tmp_path / "out" / "HH-RLHF-LICENSE").read_text() == "MIT License\n"
    prompts, _ = load_prompts(shipped)  # the real HH-RLHF reader, from the gzipped file
    assert [p.prompt[-1]["content"] for p in prompts] == ["How do I pick a lock?", "What is the worst insult?"]
    assert prompts[1].chosen == "I would rather not say."


def test_build_demo_with_the_cli_then_again_from_cache(tmp_path, tiny_model_dir):
    out = tmp_path / "demo"
    args = ["data", "build-demo", "--out", str(out), "--train-prompts", "6", "--k", "2", "--max-new-tokens", "6",
            "--model", str(tiny_model_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    pairs_rows = read_jsonl(out / "train_pairs.jsonl")
    card = (out / "DATA_CARD.md").read_text()
    dropped = sum(int(n) for n in re.findall(r"dropped (\d+)", card))
    assert len(pairs_rows) + dropped == 6
    for row in pairs_rows:
        assert row["chosen_score"] - row["rejected_score"] >= NEAR_TIE_MARGIN
        assert row["category"] in {"harmful", "benign"} and row["source"] in {"do-not-answer", "chatterbot-corpus"}
    for needle in ("Apache-2.0", "MIT", "BSD-3-Clause", "Neither is a learned reward model", "temperature 0.8",
                   "labeller (pairs)", DEMO_SYSTEM_PROMPT):
        assert needle in card
    pairs, _ = load_pairs(out / "train_pairs.jsonl")
    assert len(pairs) == len(pairs_rows)

    # Rebuilding with the same settings samples nothing new and writes the same data.
    cached = sorted((cache_root() / "demo_samples").iterdir())
    report = build_demo_data(tmp_path / "again", 6, k=2, max_new_tokens=6, seed=0, model_spec=str(tiny_model_dir))
    assert sorted((cache_root() / "demo_samples").iterdir()) == cached
    assert (tmp_path / "again" / "train_pairs.jsonl").read_text() == (out / "train_pairs.jsonl").read_text()
    assert report["samples"] == 6 * 2
    # A tiny random model rarely stops within 6 tokens: its cut samples were drawn again at 12 and, still
    # cut, are left out of every pair.
    assert report["first_cut"] >= report["still_cut"] > 0


def test_shipped_demo_data_loads_and_matches_the_preset():
    train_path, test_path = demo_paths()
    pairs, summary = load_pairs(train_path)
    prompts, summary_test = load_prompts(test_path)
    assert len(pairs) >= 64 and not summary.dropped
    assert len(prompts) == 631 and all(p.chosen for p in prompts) and not summary_test.dropped
    assert (train_path.parent / "DATA_CARD.md").exists() and (train_path.parent / "HH-RLHF-LICENSE").exists()
    preset = load_config("demo")
    assert preset.system_prompt == DEMO_SYSTEM_PROMPT  # the pairs were sampled under the preset's system turn
    assert preset.test_prompts.source == "builtin:hh-rlhf-test" and preset.test_prompts.layout == "hh-rlhf"

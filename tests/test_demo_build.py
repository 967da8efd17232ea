"""Demo data: prompt selection from the offline sources, on-policy pairs, the CLI and the shipped files."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from posweep.cli import app
from posweep.config import cache_root
from posweep.data import load_pairs, load_prompts
from posweep.data.demo_sources import (
    TEST_CATEGORIES,
    TRAIN_CATEGORIES,
    demo_paths,
    select_prompts,
    user_prompt,
)
from posweep.demo_build import NEAR_TIE_MARGIN, DrawnSample, build_demo_data, pair_rows


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_train_and_test_prompts_come_from_different_sources():
    train, test, available = select_prompts(40, 30, seed=0)
    assert available["train_harmful"] == 939 and available["test_harmful"] == 200  # Do-Not-Answer, HarmBench
    assert [p.meta["category"] for p in train].count("harmful") == 20
    assert [p.meta["category"] for p in test].count("harmful") == 15
    assert {p.meta["source"] for p in train} == {"do-not-answer", "chatterbot-corpus"}
    assert {p.meta["source"] for p in test} == {"harmbench", "chatterbot-corpus"}
    benign_train = {p.meta["subset"] for p in train if p.meta["category"] == "benign"}
    benign_test = {p.meta["subset"] for p in test if p.meta["category"] == "benign"}
    assert benign_train <= set(TRAIN_CATEGORIES) and benign_test <= set(TEST_CATEGORIES)
    assert len({p.meta["subset"] for p in train if p.meta["category"] == "harmful"}) == 5  # round-robin
    texts = [p.prompt[0]["content"].lower() for p in train + test]
    assert len(texts) == len(set(texts))
    assert all(len(t.split()) >= 4 for t in texts)
    assert select_prompts(40, 30, seed=0)[0] == train  # seeded


def test_pairs_are_best_versus_worst_and_near_ties_are_dropped():
    prompts = [user_prompt(f"p{i}", f"question {i}", "benign", "test", "x") for i in range(5)]
    samples = [[DrawnSample(f"answer {i}-{j}", 3, False) for j in range(3)] for i in range(5)]
    samples[3][0] = DrawnSample("  ", 0, False)  # never chosen or rejected, even with the lowest score
    samples[4][0] = samples[4][1] = DrawnSample("", 0, False)
    scores = [[0.1, 0.5, -0.2], [0.30, 0.31, 0.30], [0.0, -0.9, 0.4], [-1.0, 0.2, 0.6], [-1.0, -1.0, 0.3]]
    rows, dropped = pair_rows(prompts, samples, scores)
    assert dropped == {"near_tie": 1, "too_few_nonempty": 1}
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("answer 0-1", "answer 0-2"), ("answer 2-2", "answer 2-1"),
                                                            ("answer 3-2", "answer 3-1")]
    assert rows[0]["chosen_score"] == 0.5 and rows[0]["category"] == "benign"


def test_build_demo_with_the_cli_then_again_from_cache(tmp_path, tiny_model_dir):
    out = tmp_path / "demo"
    args = ["data", "build-demo", "--out", str(out), "--train-prompts", "6", "--test-prompts", "4", "--k", "2",
            "--test-k", "2", "--max-new-tokens", "6", "--model", str(tiny_model_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    pairs_rows, test_rows = read_jsonl(out / "train_pairs.jsonl"), read_jsonl(out / "test_prompts.jsonl")
    card = (out / "DATA_CARD.md").read_text()
    dropped = sum(int(n) for n in re.findall(r"dropped (\d+)", card))
    assert len(pairs_rows) + dropped == 6
    for row in pairs_rows:
        assert row["chosen_score"] - row["rejected_score"] >= NEAR_TIE_MARGIN
        assert row["category"] in {"harmful", "benign"} and row["source"] in {"do-not-answer", "chatterbot-corpus"}
    assert len(test_rows) == 4 and all(row["chosen"] is not None for row in test_rows)
    assert {row["source"] for row in test_rows} == {"harmbench", "chatterbot-corpus"}
    for needle in ("Apache-2.0", "MIT", "BSD-3-Clause", "stand-in", "temperature 0.8"):
        assert needle in card

    # The files load with the project's readers; the test prompts keep their category for the judge.
    pairs, _ = load_pairs(out / "train_pairs.jsonl")
    prompts, _ = load_prompts(out / "test_prompts.jsonl")
    assert len(pairs) == len(pairs_rows) and prompts[0].meta["category"] == "harmful"

    # Rebuilding with the same settings samples nothing new and writes the same data.
    cached = sorted((cache_root() / "demo_samples").iterdir())
    report = build_demo_data(tmp_path / "again", 6, 4, k=2, max_new_tokens=6, seed=0, model_spec=str(tiny_model_dir),
                             test_k=2)
    assert sorted((cache_root() / "demo_samples").iterdir()) == cached
    assert (tmp_path / "again" / "train_pairs.jsonl").read_text() == (out / "train_pairs.jsonl").read_text()
    assert report["pairs"] == len(pairs_rows) and report["samples"] == 6 * 2 + 4 * 2


def test_shipped_demo_data_loads():
    train_path, test_path = demo_paths()
    pairs, summary = load_pairs(train_path)
    prompts, _ = load_prompts(test_path)
    assert len(pairs) >= 100 and not summary.dropped
    assert len(prompts) >= 100 and all(p.chosen for p in prompts)
    assert {p.meta["category"] for p in prompts} == {"harmful", "benign"}
    assert (train_path.parent / "DATA_CARD.md").exists()

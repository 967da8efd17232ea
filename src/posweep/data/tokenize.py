"""Tokenization with the chat template, truncation, and the tokenized-pairs cache.

In: ``Pair`` records and a tokenizer. Out: ``TokenizedPairs`` (prompt ids, chosen ids, rejected ids; each
response ends in the chat template's end-of-turn token, ``end_of_turn_id``, unless truncated), cached under ``$POSWEEP_CACHE/data/<key>/`` where the key hashes
(pair content, tokenizer incl. merges and chat template, limits, counts of rows read and dropped), so a
whole sweep — and every later sweep on the same data — tokenizes once (docs/DESIGN.md section 5).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from posweep.config import DataLimits, cache_root, stable_hash
from posweep.data.layouts import load_pairs
from posweep.data.records import DataSummary, Messages, Pair
from posweep.io import write_atomic_parquet, write_atomic_text


def encode_prompt(tokenizer, messages: Messages) -> list[int]:
    """Token ids of a prompt rendered with the chat template, ending where the assistant speaks."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


_PROBE = "posweep end-of-turn probe"  # assistant content whose closing token we look for


def end_of_turn_id(tokenizer) -> int:
    """The token the chat template closes an assistant turn with; the tokenizer's eos when it shows none.

    Found from the template itself: render ``[user, assistant(PROBE), user]`` and take the first token
    after the assistant's content (leading whitespace skipped) when it is a special token (not unk or bos). Phi-3:
    ``<|end|>`` (its eos is ``<|endoftext|>``); Llama 3: ``<|eot_id|>``; Gemma: ``<end_of_turn>``;
    SmolLM2 / Qwen: ``<|im_end|>``, which is also their eos. Templates that close a turn with plain text
    (the ``Role: content`` fallback) or cannot render this conversation fall back to eos."""
    eos = tokenizer.eos_token_id
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE},
                {"role": "user", "content": "Thanks"}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # templates raise their own errors (role order, missing system turn): no evidence
        return eos
    at = text.find(_PROBE) if isinstance(text, str) else -1
    if at < 0:
        return eos
    after = text[at + len(_PROBE):].lstrip()
    ids = tokenizer(after, add_special_tokens=False).input_ids if after else []
    special = set(tokenizer.all_special_ids) | {i for i, token in tokenizer.added_tokens_decoder.items()
                                                if getattr(token, "special", False)}
    special -= {tokenizer.unk_token_id, tokenizer.bos_token_id}  # unknown text, or the next turn's start
    return ids[0] if ids and ids[0] in special else eos


def encode_response(tokenizer, text: str, end_id: int | None = None) -> list[int]:
    """Token ids of a response, ending in the chat template's end-of-turn token (``end_of_turn_id``; pass
    ``end_id`` to skip finding it again for every response)."""
    end_id = end_of_turn_id(tokenizer) if end_id is None else end_id
    return tokenizer(text, add_special_tokens=False).input_ids + [end_id]


def tokenizer_fingerprint(tokenizer) -> str:
    """Everything that decides the ids: vocabulary, merges, normalizer (the backend's definition for fast
    tokenizers), chat template and eos."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()
        # The serialisation starts with version, truncation, padding: call-time state, not identity. Hash
        # the raw text from "added_tokens" on (parsing 1.5 MB of JSON would cost a second).
        start = definition.find('"added_tokens"')
        ids = hashlib.sha256(definition[max(start, 0):].encode()).hexdigest()
    else:
        ids = stable_hash(sorted(tokenizer.get_vocab().items()))
    return stable_hash({"ids": ids, "template": tokenizer.chat_template, "eos": tokenizer.eos_token_id,
                        "end_of_turn": end_of_turn_id(tokenizer), "class": type(tokenizer).__name__})


@dataclass
class TokenizedPairs:
    """Tokenized preference pairs; ``fingerprint`` keys every cache computed from them."""

    pair_ids: list[str]
    prompt_ids: list[list[int]]
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    fingerprint: str
    summary: dict

    def __len__(self) -> int:
        return len(self.pair_ids)

    def to_table(self) -> pa.Table:
        token_lists = pa.list_(pa.int32())
        return pa.table({"pair_id": pa.array(self.pair_ids, pa.string()),
                         "prompt_ids": pa.array(self.prompt_ids, token_lists),
                         "chosen_ids": pa.array(self.chosen_ids, token_lists),
                         "rejected_ids": pa.array(self.rejected_ids, token_lists)})

    @classmethod
    def from_table(cls, table: pa.Table, fingerprint: str, summary: dict) -> TokenizedPairs:
        columns = table.to_pydict()
        return cls(columns["pair_id"], columns["prompt_ids"], columns["chosen_ids"], columns["rejected_ids"],
                   fingerprint, summary)

    def length_stats(self) -> dict:
        lengths = {name: [len(x) for x in getattr(self, f"{name}_ids")] for name in ("prompt", "chosen", "rejected")}
        stats: dict = {name: describe_lengths(values) for name, values in lengths.items() if values}
        if len(self):
            stats["chosen_longer_share"] = sum(c > r for c, r in zip(lengths["chosen"], lengths["rejected"])) / len(self)
        return stats


def describe_lengths(values: list[int]) -> dict:
    """Mean, median, min and max of token lengths (what summaries and ``data inspect`` show)."""
    import numpy as np

    array = np.asarray(values)
    return {"mean": float(array.mean()), "median": float(np.median(array)), "max": int(array.max()),
            "min": int(array.min())}


def truncate_pair(prompt: list[int], chosen: list[int], rejected: list[int], limits: DataLimits,
                  truncated: Counter) -> tuple[list[int], list[int], list[int]] | None:
    """Apply ``limits`` to one pair (see ``DataLimits``); ``None`` when a long prompt must be dropped.
    Counts pairs whose prompt was cut under ``truncated["prompt"]``, cut responses under ``["response"]``."""
    if len(prompt) > limits.max_prompt_length:
        if limits.long_prompt == "drop":
            return None
        truncated["prompt"] += 1
        prompt = prompt[-limits.max_prompt_length:]
    room = limits.max_length - len(prompt)  # >= 1: DataLimits keeps max_prompt_length < max_length
    responses = []
    for response in (chosen, rejected):
        if len(response) > room:
            truncated["response"] += 1
            response = response[:room]
        responses.append(response)
    return prompt, responses[0], responses[1]


def tokenize_pairs(pairs: list[Pair], tokenizer, limits: DataLimits, summary: DataSummary | None = None) -> TokenizedPairs:
    """Tokenize pairs with the chat template and apply ``limits`` (see ``DataLimits``)."""
    summary = summary or DataSummary(source="<memory>", rows_read=len(pairs), rows_kept=len(pairs))
    truncated: Counter = Counter()
    out = TokenizedPairs([], [], [], [], "", {})
    end_id = end_of_turn_id(tokenizer)
    for pair in pairs:
        cut = truncate_pair(encode_prompt(tokenizer, pair.prompt), encode_response(tokenizer, pair.chosen, end_id),
                            encode_response(tokenizer, pair.rejected, end_id), limits, truncated)
        if cut is None:
            summary.drop("prompt_too_long")
            summary.rows_kept -= 1
            continue
        out.pair_ids.append(pair.pair_id)
        out.prompt_ids.append(cut[0])
        out.chosen_ids.append(cut[1])
        out.rejected_ids.append(cut[2])
    summary.truncated.update(truncated)
    out.summary = summary.to_dict()
    return out


def prepare_pairs(source: str | os.PathLike, tokenizer, limits: DataLimits | None = None,
                  pairs: list[Pair] | None = None, summary: DataSummary | None = None) -> TokenizedPairs:
    """Load, validate, tokenize and cache a pair source; a second call with the same inputs reads the cache.

    The key hashes the pairs' content (not the file name), the tokenizer and its template, the limits and
    the counts of rows read and dropped before tokenizing (they are part of the stored summary).
    """
    limits = limits or DataLimits()
    if pairs is None:
        pairs, summary = load_pairs(source)
    summary = summary or DataSummary(source=str(source), rows_read=len(pairs), rows_kept=len(pairs))
    content = stable_hash([[p.pair_id, p.prompt, p.chosen, p.rejected] for p in pairs])
    key = stable_hash({"content": content, "tokenizer": tokenizer_fingerprint(tokenizer),
                       "limits": limits.model_dump(), "rows_read": summary.rows_read,
                       "dropped_before": dict(summary.dropped)})
    folder = pairs_cache_dir(key)
    if (folder / "pairs.parquet").exists() and (folder / "summary.json").exists():
        cached_summary = json.loads((folder / "summary.json").read_text())
        return TokenizedPairs.from_table(pq.read_table(folder / "pairs.parquet"), key, cached_summary)
    tokenized = tokenize_pairs(pairs, tokenizer, limits, summary)
    tokenized.fingerprint = key
    tokenized.summary["limits"] = limits.model_dump()
    tokenized.summary["lengths"] = tokenized.length_stats()
    write_atomic_parquet(tokenized.to_table(), folder / "pairs.parquet")
    write_atomic_text(json.dumps(tokenized.summary, indent=2), folder / "summary.json")  # last: marks complete
    return tokenized


def pairs_cache_dir(fingerprint: str) -> Path:
    """Where ``prepare_pairs`` keeps the tokenized pairs (``pairs.parquet``) and ``summary.json``."""
    return cache_root() / "data" / fingerprint

"""Preference pairs and prompt sets: read, validate, tokenize once, cache (docs/DESIGN.md sections 5 and 9).

In: a data source (file, possibly compressed; ``datasets`` folder or hub name; ``builtin:demo-*``) and a
layout. Out: ``Pair`` / ``PromptItem`` records with a ``DataSummary`` (rows read, kept, dropped by reason,
truncated), then ``TokenizedPairs`` cached by content.

- ``records``: the record types, ``DROP_REASONS``, ``DataError``.
- ``readers``: rows from files and datasets.
- ``layouts``: the layout registry (``pairs``, ``pku-saferlhf``, ``prompts``, ``hh-rlhf``).
- ``tokenize``: chat-template tokenization, truncation, the tokenized-pairs cache.
- ``inspect``: what ``posweep data inspect`` reports.
- ``demo_sources``: the demo's packaged files and the public prompt sets behind them.
"""

from posweep.data.layouts import (
    LAYOUTS,
    PAIR_LAYOUTS,
    PROMPT_LAYOUTS,
    detect_layout,
    get_layout,
    hh_rlhf_prompts,
    load_pairs,
    load_prompts,
    pairs_from_rows,
    parse_rows,
    pku_saferlhf_pairs,
    prompts_from_rows,
    split_hh_transcript,
)
from posweep.data.readers import read_rows
from posweep.data.records import (
    DROP_REASONS,
    DataError,
    DataSummary,
    Messages,
    Pair,
    PromptItem,
    with_system_turn,
)
from posweep.data.tokenize import (
    TokenizedPairs,
    encode_prompt,
    encode_response,
    end_of_turn_id,
    pairs_cache_dir,
    prepare_pairs,
    tokenize_pairs,
    tokenizer_fingerprint,
    truncate_pair,
)

__all__ = ["DROP_REASONS", "LAYOUTS", "PAIR_LAYOUTS", "PROMPT_LAYOUTS", "DataError", "DataSummary", "Messages",
           "Pair", "PromptItem", "TokenizedPairs", "detect_layout", "encode_prompt", "encode_response",
           "end_of_turn_id", "get_layout", "hh_rlhf_prompts", "load_pairs", "load_prompts", "pairs_cache_dir", "pairs_from_rows",
           "parse_rows", "pku_saferlhf_pairs", "prepare_pairs", "prompts_from_rows", "read_rows",
           "split_hh_transcript", "tokenize_pairs", "tokenizer_fingerprint", "truncate_pair", "with_system_turn"]

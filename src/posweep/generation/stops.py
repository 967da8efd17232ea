"""Where a sampled response ends: the model's own end-of-turn tokens, one rule for every backend.

In: a tokenizer and, optionally, the model's generation config. Out: ``stop_token_ids`` (the tokens that end
a response) and ``split_at_stop`` (a generated row cut at its first stop token: the response without it,
and which token it was). The ``hf`` and ``vllm`` backends both stop at ``stop_token_ids`` and both return
what ``split_at_stop`` returns, so they end responses the same way (docs/DESIGN.md section 3).

A response ends at any of: the chat template's end-of-turn token (``data.end_of_turn_id``, the token every
training response ends with), the tokenizer's eos, and every eos the generation config lists. Phi-3's
generation config lists ``<|endoftext|>``, ``<|assistant|>`` and ``<|end|>``; its template closes a turn with
``<|end|>`` while its tokenizer's eos is ``<|endoftext|>``, so stopping at eos alone would run every
response to the token cap.
"""

from __future__ import annotations

from collections.abc import Iterable

from posweep.data import end_of_turn_id


def _as_ids(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """The tokens that end a sampled response, the template's end-of-turn token first: end-of-turn ∪
    tokenizer eos ∪ ``generation_config.eos_token_id`` (an int or a list). Raises when there is none."""
    ids = [end_of_turn_id(tokenizer), tokenizer.eos_token_id,
           *_as_ids(getattr(generation_config, "eos_token_id", None))]
    ids = list(dict.fromkeys(i for i in ids if i is not None))
    if not ids:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos or end-of-turn token: "
                         "sampling could not stop")
    return ids


def model_stop_token_ids(model, tokenizer) -> list[int]:
    """``stop_token_ids`` with the loaded model's generation config (``model.generation_config``)."""
    return stop_token_ids(tokenizer, getattr(model, "generation_config", None))


def split_at_stop(generated: Iterable[int], stop_ids: Iterable[int]) -> tuple[list[int], int | None]:
    """(the tokens before the first stop token, that stop token); (all tokens, None) when the row has no
    stop token, i.e. it was cut at ``max_new_tokens``."""
    stops = set(stop_ids)
    tokens = list(generated)
    for position, token in enumerate(tokens):
        if token in stops:
            return tokens[:position], token
    return tokens, None

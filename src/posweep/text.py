"""Text statistics shared by the demo judge and the collapse flags (torch-free).

One tokenization into words and one repetition measure, so a response the judge penalises as a loop is the
response the collapse analysis flags as repetitive.
"""

from __future__ import annotations

import re


def normalize_quotes(text: str) -> str:
    return text.replace("’", "'").replace("‘", "'")


def words(text: str) -> list[str]:
    """Lower-case word tokens (letters, digits, apostrophes)."""
    return re.findall(r"[a-z0-9']+", normalize_quotes(text).lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of the text's word n-grams that already occurred earlier in it (0 = no loops, 0 with no n-gram)."""
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0

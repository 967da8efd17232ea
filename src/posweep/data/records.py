"""Records every data stage shares: preference pairs, evaluation prompts, the summary of a load.

``DataSummary`` counts what was read, kept, dropped (by one of ``DROP_REASONS``, nothing else) and
truncated; ``DataError`` is bad input, its message naming the source, row and problem.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from posweep.config import UserError

Messages = list[dict[str, str]]

# The only reasons a row is dropped (anything else is an error). Stable: summaries and reports use them,
# and ``DataSummary.drop`` refuses any other.
DROP_REASONS = (
    "non_string_response", "empty_response", "chosen_equals_rejected", "empty_prompt", "prompt_too_long",
    "dual_safe", "dual_unsafe", "safer_response_id_disagrees", "no_assistant_turn", "malformed_transcript",
    "over_limit",  # beyond a sweep's ``limit`` (a seeded random subset is kept)
)


class DataError(UserError, ValueError):
    """Bad input; the message names the source, row and problem."""


def with_system_turn(messages: Messages, system_prompt: str | None) -> Messages:
    """``messages`` led by a system turn ``system_prompt``, unless there is none or they already have one."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


@dataclass
class Pair:
    pair_id: str
    prompt: Messages  # the conversation up to the assistant's turn
    chosen: str
    rejected: str


@dataclass
class PromptItem:
    """An evaluation prompt, with the dataset's reference ("chosen") response where there is one."""

    prompt_id: str
    prompt: Messages
    chosen: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"category": "harmful"} for judges


@dataclass
class DataSummary:
    source: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    # "prompt": pairs whose prompt was cut from the left; "response": responses (chosen and rejected
    # counted separately) cut from the right.
    truncated: Counter = field(default_factory=Counter)

    def drop(self, reason: str, count: int = 1) -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}; add it to DROP_REASONS (known: {', '.join(DROP_REASONS)})")
        self.dropped[reason] += count

    def to_dict(self) -> dict:
        return {"source": self.source, "rows_read": self.rows_read, "rows_kept": self.rows_kept,
                "dropped": dict(self.dropped), "truncated": dict(self.truncated)}

"""Layouts: how rows become preference pairs or evaluation prompts, in one registry.

Layouts, as TRL names them, and the paper's datasets (docs/DESIGN.md section 9):

- ``pairs``: ``prompt``, ``chosen``, ``rejected`` strings; or conversational with an explicit prompt
  (``prompt`` a list of ``{role, content}`` messages, ``chosen`` / ``rejected`` one assistant message each);
  or conversational with an implicit prompt (``chosen`` and ``rejected`` full conversations whose shared
  leading messages are the prompt, also when a plain-string ``prompt`` column sits beside them, as in
  UltraFeedback-binarized: what TRL's ``maybe_extract_prompt`` does);
- ``pku-saferlhf``: PKU-SafeRLHF pairs, filtered as the paper does;
- ``prompts``: a ``prompt`` column (string or messages), an optional reference ``chosen``, other columns
  kept as ``meta``;
- ``hh-rlhf``: HH-RLHF transcripts, split into prompt turns and the chosen final response.

``LAYOUTS`` maps each name to its kind (pairs or prompts), how to recognise it from its columns and how to
parse it; the sweep, ``posweep train`` and ``posweep data inspect`` all go through ``load_pairs`` /
``load_prompts`` / ``parse_rows``. Bad rows are dropped and counted (``DROP_REASONS``) or fail naming the
source, row and problem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from posweep.data.readers import read_rows
from posweep.data.records import DataError, DataSummary, Messages, Pair, PromptItem


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def _as_messages(value: Any, where: str, key: str) -> Messages:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if _is_message_list(value):
        for i, message in enumerate(value):
            if not isinstance(message.get("content"), str):
                raise DataError(f"{where}: {key!r} message {i} has no string 'content'")
        return [{"role": str(m["role"]), "content": m["content"]} for m in value]
    raise DataError(f"{where}: {key!r} must be a string or a non-empty list of {{role, content}} messages")


def _response_text(value: Any, where: str, key: str) -> str | None:
    """A response as text: a string, or a conversational list holding exactly one assistant message.

    ``None`` when the value is not text (the caller counts it); an error when the list holds more than the
    final assistant turn, since keeping only its last message would silently drop the rest."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        if not value:
            return ""
        if len(value) > 1 or value[0].get("role") != "assistant":
            roles = [m.get("role") for m in value]
            raise DataError(f"{where}: {key!r} must be one assistant message after the prompt, got roles {roles}")
        content = value[0].get("content")
        return content if isinstance(content, str) else None
    return None


def _split_implicit_prompt(chosen: list, rejected: list) -> tuple[list, list, list]:
    """TRL's implicit-prompt layout: the shared leading messages are the prompt (each side keeps at least
    its last message as the response)."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def check_unique_ids(ids: list[str], source: str, what: str) -> None:
    first_row: dict[str, int] = {}
    for index, item_id in enumerate(ids):
        if item_id in first_row:
            raise DataError(f"{source}: {what} {item_id!r} appears twice (items {first_row[item_id]} and {index}); "
                            "ids key caches and per-sample tables, so they must be unique")
        first_row[item_id] = index


def pairs_from_rows(rows: list[dict], source: str, summary: DataSummary | None = None) -> tuple[list[Pair], DataSummary]:
    """Validate rows into pairs. Missing columns and layout errors fail; bad rows are dropped and counted."""
    summary = summary or DataSummary(source=source)
    summary.rows_read += len(rows)
    if rows:
        columns = set(rows[0])
        if not {"chosen", "rejected"} <= columns:
            raise DataError(f"{source}: preference data needs columns 'chosen' and 'rejected' "
                            f"(and 'prompt' unless conversational); found {sorted(columns)}")
    pairs = []
    for index, row in enumerate(rows):
        where = f"{source}: row {index}"
        for key in ("chosen", "rejected"):
            if key not in row:
                raise DataError(f"{where}: missing column {key!r}")
        chosen, rejected = row["chosen"], row["rejected"]
        prompt_value = row.get("prompt")
        if _is_message_list(chosen) and _is_message_list(rejected) and not _is_message_list(prompt_value):
            # Implicit prompt. A plain-string prompt beside conversational responses is a copy of the first
            # user turn (UltraFeedback-binarized); TRL ignores it too.
            prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected)
            if not prompt:
                raise DataError(f"{where}: chosen and rejected share no leading messages, so there is no prompt")
        elif prompt_value is not None:
            prompt = _as_messages(prompt_value, where, "prompt")
        else:
            raise DataError(f"{where}: missing column 'prompt' (needed unless chosen/rejected are conversations)")
        chosen_text = _response_text(chosen, where, "chosen")
        rejected_text = _response_text(rejected, where, "rejected")
        if chosen_text is None or rejected_text is None:
            summary.drop("non_string_response")
            continue
        if not chosen_text.strip() or not rejected_text.strip():
            summary.drop("empty_response")
            continue
        if chosen_text.strip() == rejected_text.strip():
            summary.drop("chosen_equals_rejected")
            continue
        if not any(m["content"].strip() for m in prompt):
            summary.drop("empty_prompt")
            continue
        pairs.append(Pair(str(row.get("pair_id", row.get("id", index))), prompt, chosen_text, rejected_text))
    check_unique_ids([p.pair_id for p in pairs], source, "pair id")
    summary.rows_kept += len(pairs)
    return pairs, summary


def prompts_from_rows(rows: list[dict], source: str) -> tuple[list[PromptItem], DataSummary]:
    """Validate rows with a ``prompt`` column (string or messages) into evaluation prompts; an optional
    ``chosen`` is the reference response; other columns are kept as ``meta``."""
    summary = DataSummary(source=source, rows_read=len(rows))
    items = []
    for index, row in enumerate(rows):
        where = f"{source}: row {index}"
        if "prompt" not in row:
            raise DataError(f"{where}: missing column 'prompt' (found {sorted(row)})")
        prompt = _as_messages(row["prompt"], where, "prompt")
        if not any(m["content"].strip() for m in prompt):
            summary.drop("empty_prompt")
            continue
        chosen = _response_text(row.get("chosen"), where, "chosen")
        meta = {k: v for k, v in row.items() if k not in {"prompt", "chosen", "rejected", "id", "prompt_id"}}
        prompt_id = str(row.get("prompt_id", row.get("id", index)))
        # An empty reference is no reference: win-vs-chosen is then NaN rather than a win against "".
        items.append(PromptItem(prompt_id, prompt, chosen if chosen and chosen.strip() else None, meta))
    check_unique_ids([item.prompt_id for item in items], source, "prompt id")
    summary.rows_kept = len(items)
    return items, summary


# ---------------------------------------------------------------------------------- the paper's data

PKU_COLUMNS = ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe", "safer_response_id")


def is_pku_saferlhf(rows: list[dict]) -> bool:
    return {"response_0", "response_1", "is_response_0_safe"} <= set(rows[0])


def pku_saferlhf_pairs(rows: list[dict], source: str = "PKU-Alignment/PKU-SafeRLHF") -> tuple[list[Pair], DataSummary]:
    """PKU-SafeRLHF rows → pairs, as the paper: keep pairs where exactly one response is safe;
    chosen = the safe one. ``safer_response_id`` must agree; disagreements are dropped and counted.
    ``better_response_id`` (helpfulness) is deliberately ignored: the paper trains for harmlessness."""
    summary = DataSummary(source=source)
    if rows and not set(PKU_COLUMNS) <= set(rows[0]):
        raise DataError(f"{source}: not in PKU-SafeRLHF layout; missing columns {sorted(set(PKU_COLUMNS) - set(rows[0]))}")
    rows_as_pairs = []
    for index, row in enumerate(rows):
        missing = [c for c in PKU_COLUMNS if c not in row]
        if missing:
            raise DataError(f"{source}: row {index}: missing columns {missing}")
        safe0, safe1 = row["is_response_0_safe"], row["is_response_1_safe"]
        if safe0 not in (0, 1) or safe1 not in (0, 1):  # bool("false") would be True: refuse, do not guess
            raise DataError(f"{source}: row {index}: is_response_0_safe / is_response_1_safe must be booleans, "
                            f"got {safe0!r} / {safe1!r}")
        if safe0 and safe1:
            summary.drop("dual_safe")
            continue
        if not safe0 and not safe1:
            summary.drop("dual_unsafe")
            continue
        safe_index = 0 if safe0 else 1
        if row["safer_response_id"] not in (0, 1):
            raise DataError(f"{source}: row {index}: safer_response_id must be 0 or 1, got {row['safer_response_id']!r}")
        if int(row["safer_response_id"]) != safe_index:
            summary.drop("safer_response_id_disagrees")
            continue
        rows_as_pairs.append({"id": row.get("id", index), "prompt": row["prompt"],
                              "chosen": row[f"response_{safe_index}"], "rejected": row[f"response_{1 - safe_index}"]})
    pairs, _ = pairs_from_rows(rows_as_pairs, source, summary)
    summary.rows_read = len(rows)  # pairs_from_rows counted only the rows that passed the safety filter
    return pairs, summary


HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"
_HH_MARKER = re.compile(r"(\n\nHuman:|\n\nAssistant:)")


def is_hh_rlhf(rows: list[dict]) -> bool:
    first = rows[0]
    return ({"chosen", "rejected"} <= set(first) and "prompt" not in first and isinstance(first["chosen"], str)
            and HH_ASSISTANT in first["chosen"])


def split_hh_transcript(text: str) -> tuple[Messages, str]:
    """An HH-RLHF transcript → (prompt turns, final assistant response).

    The prompt is the text up to and including the last ``"\\n\\nAssistant:"``, split into user/assistant
    turns (the trailing assistant marker becomes the chat template's generation prompt); the rest is the
    response. Raises ``DataError`` for a transcript that does not have that shape: text before the first
    turn, no assistant turn, a human turn after the last assistant marker, a prompt not ending with the
    human's turn, or an empty response.
    """
    if not isinstance(text, str):
        raise DataError(f"transcript is a {type(text).__name__}, not a string")
    if text.startswith(("Human:", "Assistant:")):  # some copies drop the leading blank line
        text = "\n\n" + text
    preamble, *marked = _HH_MARKER.split(text)
    if preamble.strip():
        raise DataError(f"text before the first turn marker: {preamble[:40]!r}")
    turns = [("user" if marker == HH_HUMAN else "assistant", body.strip())
             for marker, body in zip(marked[0::2], marked[1::2])]
    if not turns or turns[-1][0] != "assistant":
        raise DataError("the transcript does not end with an assistant turn")
    messages = [{"role": role, "content": content} for role, content in turns[:-1]]
    response = turns[-1][1]
    if not messages or messages[-1]["role"] != "user":
        raise DataError("the turn before the final response is not the human's")
    if not response:
        raise DataError("the final assistant response is empty")
    return messages, response


def hh_rlhf_prompts(rows: list[dict], source: str = "Anthropic/hh-rlhf:test") -> tuple[list[PromptItem], DataSummary]:
    """HH-RLHF rows (``chosen``, ``rejected`` transcripts) → evaluation prompts with the chosen response."""
    summary = DataSummary(source=source, rows_read=len(rows))
    if rows and "chosen" not in rows[0]:
        raise DataError(f"{source}: not in HH-RLHF layout; needs a 'chosen' transcript column, found {sorted(rows[0])}")
    items = []
    for index, row in enumerate(rows):
        if "chosen" not in row:
            raise DataError(f"{source}: row {index}: missing column 'chosen'")
        transcript = row["chosen"]
        if not isinstance(transcript, str) or HH_ASSISTANT not in transcript:
            summary.drop("no_assistant_turn")
            continue
        try:
            messages, response = split_hh_transcript(transcript)
        except DataError:
            summary.drop("malformed_transcript")
            continue
        if not any(m["content"] for m in messages):
            summary.drop("empty_prompt")
            continue
        items.append(PromptItem(str(row.get("id", index)), messages, response))
    check_unique_ids([item.prompt_id for item in items], source, "prompt id")
    summary.rows_kept = len(items)
    return items, summary


# ------------------------------------------------------------------------------------------- registry


def _has_pair_columns(rows: list[dict]) -> bool:
    return {"chosen", "rejected"} <= set(rows[0])


def _has_prompt_column(rows: list[dict]) -> bool:
    return "prompt" in rows[0]


@dataclass(frozen=True)
class Layout:
    name: str
    kind: Literal["pairs", "prompts"]
    detect: Callable[[list[dict]], bool]  # recognise the layout from the first row's columns
    parse: Callable[[list[dict], str], tuple[list, DataSummary]]


# In detection order: the specific layouts first.
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in [
    Layout("pku-saferlhf", "pairs", is_pku_saferlhf, pku_saferlhf_pairs),
    Layout("hh-rlhf", "prompts", is_hh_rlhf, hh_rlhf_prompts),
    Layout("pairs", "pairs", _has_pair_columns, pairs_from_rows),
    Layout("prompts", "prompts", _has_prompt_column, prompts_from_rows),
]}
PAIR_LAYOUTS = tuple(name for name, layout in LAYOUTS.items() if layout.kind == "pairs")
PROMPT_LAYOUTS = tuple(name for name, layout in LAYOUTS.items() if layout.kind == "prompts")


def get_layout(name: str, kind: str | None = None) -> Layout:
    """The layout called ``name``; a ``DataError`` lists the known ones (of ``kind``, if given)."""
    known = [n for n, layout in LAYOUTS.items() if kind is None or layout.kind == kind]
    if name not in known:
        raise DataError(f"unknown layout {name!r}; use auto, {', '.join(known)}")
    return LAYOUTS[name]


def detect_layout(rows: list[dict], kind: str | None = None) -> str:
    """The first layout (of ``kind``, if given) whose columns the rows have; with ``kind``, the generic
    layout of that kind (``pairs`` / ``prompts``) when none matches."""
    if not rows:
        raise DataError("no rows, so no layout to detect")
    for name, layout in LAYOUTS.items():
        if (kind is None or layout.kind == kind) and layout.detect(rows):
            return name
    if kind is not None:  # the generic layout of the kind: its parser names the missing columns
        return kind
    raise DataError(f"cannot tell the layout from columns {sorted(rows[0])}: expected prompt/chosen/rejected, "
                    "PKU-SafeRLHF or HH-RLHF columns")


def parse_rows(rows: list[dict], source: str, layout: str = "auto", kind: str | None = None) -> tuple[str, list, DataSummary]:
    """(layout name, records, summary) of rows in ``layout`` (``auto``: detected among layouts of ``kind``)."""
    if layout == "auto":
        if not rows:
            return ("pairs" if kind == "pairs" else "prompts"), [], DataSummary(source=source)
        layout = detect_layout(rows, kind)
    items, summary = get_layout(layout, kind).parse(rows, source)
    return layout, items, summary


def load_pairs(source: str | os.PathLike, layout: str = "auto") -> tuple[list[Pair], DataSummary]:
    """Preference pairs from any supported source, in a pair layout (``auto``: PKU-SafeRLHF is recognised
    by its columns, anything else read as ``pairs``)."""
    _, pairs, summary = parse_rows(read_rows(source), str(source), layout, kind="pairs")
    return pairs, summary


def load_prompts(source: str | os.PathLike, layout: str = "auto") -> tuple[list[PromptItem], DataSummary]:
    """Evaluation prompts from any supported source (``auto``: HH-RLHF transcripts are recognised by their
    columns, anything else read as ``prompts``)."""
    _, prompts, summary = parse_rows(read_rows(source), str(source), layout, kind="prompts")
    return prompts, summary

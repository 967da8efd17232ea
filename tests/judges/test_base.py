"""posweep.judges.base: specs and input checks."""

from __future__ import annotations

import pytest

from posweep.data import PromptItem
from posweep.judges import (
    DemoJudge,
    load_judge,
)

BENIGN = "What is the capital of France?"
ANSWER = ("The capital of France is Paris. It is the country's largest city, on the Seine, and home to the "
          "Eiffel Tower and the Louvre.")


def prompt(text: str, category: str | None = None) -> PromptItem:
    return PromptItem("p", [{"role": "user", "content": text}], meta={"category": category} if category else {})


@pytest.fixture(scope="module")
def demo() -> DemoJudge:
    return DemoJudge()


def test_bad_inputs_and_specs(demo):
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        demo.score([prompt(BENIGN), prompt(BENIGN)], [ANSWER])
    with pytest.raises(ValueError, match="truncated"):
        demo.score([prompt(BENIGN)], [ANSWER], [True, False])
    with pytest.raises(ValueError, match="unknown judge spec"):
        load_judge("gpt4")

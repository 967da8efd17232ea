"""``hf:PATH_OR_ID`` judges: any single-logit ``AutoModelForSequenceClassification`` reward model.

The input is the conversation plus the response rendered with the tokenizer's chat template when it has
one; otherwise (prompt, response) as a text pair, the convention of cross-encoder reward models such as
OpenAssistant's DeBERTa ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posweep.data import Messages, PromptItem
from posweep.judges.base import (
    check_inputs,
    context_length,
    judge_fingerprint,
    left_truncate,
    local_model_dir,
    scores_in_batches,
)


def plain_prompt_text(messages: Messages) -> str:
    """A prompt as one string for text-pair models: the message itself, or labelled turns."""
    if len(messages) == 1:
        return str(messages[0]["content"])
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


@dataclass
class SequenceClassifierJudge:
    """``hf:`` judges: a single-logit ``AutoModelForSequenceClassification``."""

    name: str
    fingerprint: str
    model: torch.nn.Module
    tokenizer: object
    max_length: int
    batch_size: int = 8
    is_stand_in: bool = False

    def encode(self, prompt: Messages, response: str) -> list[int]:
        tokenizer = self.tokenizer
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}],
                                                 tokenize=False)
            ids = tokenizer(text, add_special_tokens=False).input_ids  # the template has its own specials
        else:
            ids = tokenizer(plain_prompt_text(prompt), response).input_ids
        return left_truncate(ids, self.max_length)

    def score(self, prompts: list[PromptItem], responses: list[str],
              truncated: list[bool] | None = None) -> list[float]:
        check_inputs(prompts, responses, truncated)
        rows = [self.encode(item.prompt, response) for item, response in zip(prompts, responses)]
        # The model pools its own way (decoders: the last token that is not the pad id), so pad with its pad id.
        def forward(input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]

        return scores_in_batches(rows, forward, self.tokenizer.pad_token_id, self.batch_size, self.model.device)


def load_sequence_classifier_judge(path_or_id: str, device: str | torch.device | None = None,
                                   batch_size: int = 8) -> SequenceClassifierJudge:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from posweep.models import default_device

    folder = local_model_dir(path_or_id)
    device = torch.device(device) if device is not None else default_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=dtype).to(device).eval()
    if model.config.num_labels != 1:
        raise ValueError(f"hf:{path_or_id}: a reward model has one output logit, this one has "
                         f"{model.config.num_labels} (num_labels in {folder / 'config.json'})")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return SequenceClassifierJudge(name=f"hf:{path_or_id}", fingerprint=judge_fingerprint("hf", folder),
                                   model=model, tokenizer=tokenizer,
                                   max_length=context_length(model.config, tokenizer), batch_size=batch_size)

"""``oasst:PATH_OR_ID`` judges: the OpenAssistant Pythia reward models the paper used.

``OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5``'s config names the architecture ``GPTNeoXRewardModel``
from Open-Assistant's ``model_training`` package, which transformers does not ship: a ``GPTNeoXModel``
(weights under ``gpt_neox.``) and a linear ``out_proj`` (hidden → 1) applied to the hidden state of the last
token (``pooling: "last"``; ``"mean"`` averages over tokens). It is rebuilt here from transformers'
``GPTNeoXModel`` and the checkpoint's state dict. Input:
``<|prompter|>{user}<|endoftext|><|assistant|>{answer}<|endoftext|>``, turn after turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from posweep.data import Messages, PromptItem
from posweep.judges import base

OASST_ROLE_TOKENS = {"user": "<|prompter|>", "assistant": "<|assistant|>", "system": "<|system|>"}
OASST_END = "<|endoftext|>"


def render_oasst(prompt: Messages, response: str) -> str:
    """``<|prompter|>q<|endoftext|><|assistant|>a<|endoftext|>`` for every turn, then the response."""
    parts = []
    for message in prompt:
        if message["role"] not in OASST_ROLE_TOKENS:
            raise ValueError(f"oasst judge: unknown role {message['role']!r} (use user, assistant or system)")
        parts.append(f"{OASST_ROLE_TOKENS[message['role']]}{message['content']}{OASST_END}")
    parts.append(f"{OASST_ROLE_TOKENS['assistant']}{response}{OASST_END}")
    return "".join(parts)


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: safetensors (single or sharded) or PyTorch ``.bin`` files."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(str(file)))
        return state
    files = sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model*.bin weight files")
    state = {}
    for file in files:
        state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state


# Buffers that old GPT-NeoX checkpoints saved but current transformers recomputes.
_NEOX_BUFFER_SUFFIXES = (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")


@dataclass
class OasstJudge:
    """``oasst:`` judges: GPT-NeoX backbone + linear head on the last (or mean) hidden state."""

    name: str
    fingerprint: str
    backbone: torch.nn.Module
    head: torch.nn.Linear
    tokenizer: object
    pooling: str
    max_length: int
    batch_size: int = 8
    is_stand_in: bool = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "mean":
            mask = attention_mask[..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
        else:  # right padding: the last real token sits at length - 1
            last = attention_mask.sum(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(pooled)[:, 0]

    def score(self, prompts: list[PromptItem], responses: list[str],
              truncated: list[bool] | None = None) -> list[float]:
        base.check_inputs(prompts, responses, truncated)
        rows = [base.left_truncate(self.tokenizer(render_oasst(item.prompt, response)).input_ids, self.max_length)
                for item, response in zip(prompts, responses)]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return base.scores_in_batches(rows, self.forward, pad_id, self.batch_size, self.head.weight.device)


def load_oasst_judge(path_or_id: str, device: str | torch.device | None = None, batch_size: int = 8) -> OasstJudge:
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXModel

    from posweep.models import default_device

    folder = base.local_model_dir(path_or_id)
    config_dict = json.loads((folder / "config.json").read_text())
    if config_dict.get("model_type") not in {"gpt_neox_reward_model", "gpt_neox"}:
        raise ValueError(f"oasst:{path_or_id}: {folder / 'config.json'} has model_type "
                         f"{config_dict.get('model_type')!r}; expected gpt_neox_reward_model (GPTNeoXRewardModel)")
    pooling = config_dict.get("pooling") or "last"
    if pooling not in {"last", "mean"}:
        raise ValueError(f"oasst:{path_or_id}: unknown pooling {pooling!r} in {folder / 'config.json'}")
    ignored = {"model_type", "architectures", "pooling", "transformers_version", "auto_map", "torch_dtype", "dtype"}
    config = GPTNeoXConfig(**{k: v for k, v in config_dict.items() if k not in ignored})

    state = read_state_dict(folder)
    for key in ("out_proj.weight", "out_proj.bias"):
        if key not in state:
            raise KeyError(f"oasst:{path_or_id}: checkpoint in {folder} has no {key!r} (not a GPTNeoXRewardModel?)")
    backbone_state = {k.removeprefix("gpt_neox."): v for k, v in state.items() if k.startswith("gpt_neox.")}
    backbone = GPTNeoXModel(config)
    missing, unexpected = backbone.load_state_dict(backbone_state, strict=False)
    unexpected = [k for k in unexpected if not k.endswith(_NEOX_BUFFER_SUFFIXES)]
    missing = [k for k in missing if not k.endswith(_NEOX_BUFFER_SUFFIXES)]
    if missing or unexpected:
        raise KeyError(f"oasst:{path_or_id}: backbone weights in {folder} do not match GPTNeoXModel "
                       f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    head = torch.nn.Linear(config.hidden_size, 1)
    head.load_state_dict({"weight": state["out_proj.weight"], "bias": state["out_proj.bias"]})

    device = torch.device(device) if device is not None else default_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backbone.to(device=device, dtype=dtype).eval()
    head.to(device=device, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return OasstJudge(name=f"oasst:{path_or_id}", fingerprint=base.judge_fingerprint("oasst", folder),
                      backbone=backbone, head=head, tokenizer=tokenizer, pooling=pooling,
                      max_length=base.context_length(config, tokenizer), batch_size=batch_size)

"""Typed configuration shared by every stage.

In: keyword arguments, YAML or JSON. Out: validated pydantic models whose errors name the bad key.
Every model forbids unknown keys, so a typo (``learning_rte``) fails before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator


class UserError(Exception):
    """Bad input (a file, a key, a spec, a folder): commands print its message, one line naming the thing,
    and exit with code 1, without a traceback. Every stage's input errors derive from it."""


# The embedded default policy (docs/DESIGN.md section 6), named here once for every stage and command.
DEFAULT_MODEL = "builtin:smollm2-135m-instruct"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


def cache_root() -> Path:
    """Where posweep keeps shared artifacts (converted models, tokenized data, reference log-probs)."""
    return Path(os.environ.get("POSWEEP_CACHE", Path.home() / ".cache" / "posweep")).expanduser()


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short content hash of any JSON-serialisable object (keys sorted, so order does not matter)."""
    payload = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(payload).hexdigest()[:length]


class DataLimits(Strict):
    """Truncation policy, as TRL's: the prompt keeps its last ``max_prompt_length`` tokens (cut from the
    left, so the question nearest the answer survives); the response is cut from the right so that
    prompt + response fits in ``max_length``. A response cut this way loses its eos token."""

    max_prompt_length: int = Field(256, gt=0)
    max_length: int = Field(512, gt=0)
    # "truncate": cut long prompts from the left and count them; "drop": drop the row and count it.
    long_prompt: Literal["truncate", "drop"] = "truncate"

    @model_validator(mode="after")
    def _responses_keep_a_token(self) -> DataLimits:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be smaller than max_length "
                             f"({self.max_length}) so that every response keeps at least one token")
        return self


class SamplingSpec(Strict):
    """How a response is sampled for evaluation (the paper: one sample per prompt, 256 new tokens).

    ``backend``: ``hf`` (posweep's decoder), ``hf-compiled`` (the same with a static cache and a compiled
    decode step, for GPUs), ``vllm`` (CUDA, optional extra) or ``auto`` (vllm when it is installed and CUDA
    is present, else hf). Backends draw different random numbers, so a sweep resolves ``auto`` once and
    records the result; the resolved name is part of every baseline key."""

    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    batch_size: int = Field(16, gt=0)
    backend: Literal["auto", "hf", "hf-compiled", "vllm"] = "auto"

    def key(self) -> str:
        return stable_hash(self.model_dump())


class LoraConfig(Strict):
    """LoRA adapters through ``peft`` (Hu et al. 2021): each targeted linear layer computes
    ``W·x + (alpha / r)·B·A·x`` with W frozen and only A [r × in] and B [out × r] trained (B starts at 0, so
    step 0 is the base model). ``quantize: 4bit`` is QLoRA (Dettmers et al. 2023): the frozen base is
    stored in NF4 through ``bitsandbytes`` (CUDA only)."""

    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # "all-linear": every linear layer except the LM head (peft's shorthand); or module names (q_proj, ...)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    quantize: Literal["no", "4bit"] = "no"
    # false: the checkpoint is the adapter (adapter_config.json + weights, base named by its spec);
    # true: the adapter is merged into the base and the checkpoint is an ordinary model folder.
    merge: bool = False


class FSDPConfig(Strict):
    """Sharding of weights, gradients and optimizer states over a run's processes (FSDP2, ``fully_shard``)."""

    cpu_offload: bool = Field(False, description="keep the shards (and optimizer states) in CPU memory")
    reshard_after_forward: bool = Field(True, description="free gathered weights after each layer's forward")


TRACKERS = ("tensorboard", "wandb", "mlflow")

# OptimConfig fields that say how a run is laid out or watched, not what it computes: they stay out of run
# ids and of what finished runs pin (like the executor), so switching them on never reruns a sweep.
LAYOUT_FIELDS = ("activation_checkpointing", "fsdp", "report_to", "packing")


class OptimConfig(Strict):
    """Optimisation settings shared by SFT and preference training.

    Fields added after sweeps existed are left out of dumps while at their defaults, so the run ids and
    pinned contexts of earlier sweeps stay valid."""

    learning_rate: float = Field(1e-6, gt=0)
    epochs: float = Field(1, gt=0)
    batch_size: int = Field(8, gt=0, description="pairs (or examples for SFT) per optimizer step")
    micro_batch_size: int = Field(8, gt=0, description="per forward pass; gradient accumulation fills the rest")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    log_every: int = Field(1, gt=0)
    packing: bool = Field(True, description=(
        "true: each micro-batch's pairs packed end to end without padding, each prompt computed once "
        "(posweep.training.packing), where the model's attention can take the mask; otherwise padded rows, with "
        "the reason logged. false: always padded rows. Same log-probs either way, up to float rounding."))
    # float32: float32 master weights (16 bytes/parameter with AdamW); bfloat16: weights, gradients and
    # AdamW states in bf16 (8 bytes/parameter), for models that do not fit otherwise.
    model_dtype: Literal["float32", "bfloat16"] = Field("float32", exclude_if=lambda v: v == "float32")
    lora: LoraConfig | None = Field(None, exclude_if=lambda v: v is None)
    activation_checkpointing: bool = Field(False, exclude_if=lambda v: not v,
                                           description="recompute each decoder layer in the backward pass")
    fsdp: FSDPConfig | None = Field(None, exclude_if=lambda v: v is None,
                                    description="shard over the run's processes instead of replicating (DDP)")
    report_to: list[Literal[TRACKERS]] = Field(default_factory=list, exclude_if=lambda v: not v)

    @model_serializer(mode="wrap")
    def _omit_default_packing(self, handler):
        # packing is how a run computes, not what it computes (the same numbers either way): leaving the
        # default out of dumps keeps run ids and sweep contexts, which hash model_dump(), as they were before
        # the field existed, while an explicit `packing: false` is still written out and read back.
        data = handler(self)
        if isinstance(data, dict) and self.packing:
            data.pop("packing", None)
        return data

    def identity(self, exclude: set[str] = frozenset()) -> dict:
        """What the run computes: the dump without the layout fields (``LAYOUT_FIELDS``), for run ids."""
        return self.model_dump(exclude={*LAYOUT_FIELDS, *exclude})

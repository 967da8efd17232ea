"""Packed rows through a transformers model's own attention: which models can take them, and the inputs.

In: a ``*ForCausalLM`` model (and, per forward pass, ``PackedRows``). Out: ``packed_attention(model)`` —
a ``PackedAttention`` plan, or the reason the model cannot take packed rows (the caller then falls back
to padded rows and logs it); ``attention_inputs(plan, rows)`` — the keyword arguments of the decoder's
forward (``position_ids`` and ``attention_mask``) that make its attention follow ``posweep.training.packing``'s
rule.

How the mask reaches the attention (transformers 5, ``masking_utils``): a 4D mask or a FlexAttention
``BlockMask`` given as ``attention_mask`` is used as-is by ``create_causal_mask``; decoders with sliding-window
layers (Gemma-2, Qwen2/3 with ``use_sliding_window``) also take a ``{layer type: mask}`` dict, one mask per
layer type, which is how the window reaches only the sliding layers. The window is applied on position ids
(``position[q] − position[k] < window``), which equals the padded row's column rule.

Which attention: FlexAttention (a ``BlockMask`` built from ``packing.mask_mod``, masked-out blocks skipped)
where the model supports it and the weights are on a GPU — torch 2.13 has no FlexAttention backward on CPU,
and its CPU forward compiles for ~25 s to run no faster than SDPA. Elsewhere the mask is materialised:
boolean for SDPA, additive (0 / dtype minimum, as transformers' ``eager_mask``) for eager attention, which
is what models without SDPA support run (Gemma-2: attention logit soft-capping). Flash-attention kernels
take no arbitrary mask: such models fall back to padded rows.
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field

import torch

from posweep.training.packing import PackedRows, Packing, dense_mask, mask_mod

log = logging.getLogger(__name__)

# Dense masks cost rows·T² memory and attention work (SDPA computes every masked-out score): rows of at most
# this many tokens, or the longest pair when it is longer, keep that work near the padded layout's while
# removing the padding and the second copy of each prompt. 256 measured best of 120-320 on the CPU benchmark
# (bench/RESULTS.md); rows of up to 512 there made SDPA's attention 2.9x slower than padded rows' and lost the gain.
DENSE_ROW_TOKENS = 256
FLEX_BLOCK = 128
_DICT_MASK = re.compile(r"isinstance\(\s*(?:\w+\s*:=\s*)?attention_mask\s*,\s*dict\s*\)")


@dataclass(frozen=True)
class PackedAttention:
    """How packed rows reach one model: its attention implementation, the sliding window of each layer type
    (``None``: full attention), whether the decoder takes a ``{layer type: mask}`` dict, and the row layout."""

    implementation: str  # "flex_attention" | "sdpa" | "eager"
    windows: dict[str, int | None] = field(default_factory=lambda: {"full_attention": None})
    by_layer_type: bool = False
    packing: Packing = field(default_factory=lambda: Packing(DENSE_ROW_TOKENS))


def _decoder(model):
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None:
        raise TypeError(f"{type(model).__name__}: no decoder to run packed rows through")
    return body


def _takes_mask_dict(body) -> bool:
    """Whether the decoder's forward accepts a ``{layer type: mask}`` dict. Read from its source, as
    transformers itself decides whether a model can switch attention implementation."""
    try:
        return bool(_DICT_MASK.search(inspect.getsource(type(body).forward)))
    except (OSError, TypeError):
        return False


def _switch_to_flex(model) -> bool:
    """On a GPU, run the model's attention as FlexAttention where transformers supports it for the model."""
    from transformers.utils import is_torch_flex_attn_available

    if next(model.parameters()).device.type != "cuda" or not getattr(model, "_supports_flex_attn", False):
        return False
    if not is_torch_flex_attn_available():
        return False
    if model.config._attn_implementation != "flex_attention":
        try:
            model.set_attn_implementation("flex_attention")
        except (ValueError, ImportError) as error:
            log.info("%s: FlexAttention unavailable (%s); packed rows use a materialised mask", type(model).__name__, error)
            return False
    return model.config._attn_implementation == "flex_attention"


def packed_attention(model, allow_flex: bool = True) -> PackedAttention | str:
    """The plan to run packed rows through ``model``, or why it cannot take them (one line).

    ``allow_flex``: on a GPU, switch the model to FlexAttention where supported (a no-op on CPU)."""
    config = model.config
    try:
        body = _decoder(model)
    except TypeError as error:
        return str(error)
    parameters = inspect.signature(body.forward).parameters
    if "position_ids" not in parameters and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return f"{type(body).__name__}.forward takes no position_ids"
    implementation = "flex_attention" if allow_flex and _switch_to_flex(model) else config._attn_implementation
    if implementation not in ("flex_attention", "sdpa", "eager"):
        return f"attn_implementation {implementation!r} takes no custom attention mask"
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if layer_types is None:
        if window is not None:
            return f"config.sliding_window={window} without config.layer_types: which layers slide is unknown"
        kinds = {"full_attention"}
    else:
        kinds = set(layer_types)
    unknown = kinds - {"full_attention", "sliding_attention"}
    if unknown:
        return f"layer types {sorted(unknown)} have attention patterns packed rows do not reproduce"
    windows = {"full_attention": None}
    by_layer_type = False
    if "sliding_attention" in kinds:
        if not isinstance(window, int) or window <= 0:
            return f"sliding layers but config.sliding_window={window!r}"
        if not _takes_mask_dict(body):
            return f"{type(body).__name__} has sliding layers but takes no per-layer-type mask dict"
        windows = {"full_attention": None, "sliding_attention": window}
        by_layer_type = True
    packing = Packing(None, FLEX_BLOCK) if implementation == "flex_attention" else Packing(DENSE_ROW_TOKENS)
    return PackedAttention(implementation, windows, by_layer_type, packing)


def _one_mask(plan: PackedAttention, rows: PackedRows, window: int | None, dtype: torch.dtype):
    if plan.implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        batch, width = rows.input_ids.shape
        return create_block_mask(mask_mod(rows, window), B=batch, H=None, Q_LEN=width, KV_LEN=width,
                                 device=rows.input_ids.device)
    allowed = dense_mask(rows, window)
    if plan.implementation == "sdpa":
        return allowed
    # eager attention adds the mask to the scores (transformers' eager_mask: 0 or the dtype's minimum)
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def attention_inputs(plan: PackedAttention, rows: PackedRows, dtype: torch.dtype = torch.float32) -> dict:
    """``position_ids`` and ``attention_mask`` for the decoder's forward on ``rows``; ``dtype``: the
    weights' dtype (that of eager attention's additive mask)."""
    masks = {kind: _one_mask(plan, rows, window, dtype) for kind, window in plan.windows.items()}
    return {"position_ids": rows.position_ids, "attention_mask": masks if plan.by_layer_type else masks["full_attention"]}

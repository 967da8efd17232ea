"""LoRA / QLoRA adapters through ``peft``: add them to a loaded causal LM, save them as a checkpoint.

In: a loaded model, a ``LoraConfig`` (``posweep.config``) and the spec the model was loaded from. Out: a
``peft`` model whose only trainable parameters are the adapters; a checkpoint folder that is either the
adapter (``adapter_config.json`` naming the base by its spec, the adapter weights, the tokenizer) or,
with ``merge: true``, an ordinary model folder with the adapter merged in. ``posweep.models.load_policy``
loads both kinds, so evaluation and KL need nothing special.

The reference model of a LoRA run is its base: at step 0 every B matrix is 0, so the policy *is* the
base, and the reference log-probs (cached, or computed from this same loaded model before the adapters
are added) cost no second copy of the weights.
"""

from __future__ import annotations

from pathlib import Path

from posweep.config import LoraConfig
from posweep.models import ModelError


def check_lora(lora: LoraConfig | None, fsdp: bool) -> None:
    """Refuse the combinations this trainer does not run, before any model is loaded."""
    if lora is None:
        return
    if fsdp:
        raise ModelError("lora with fsdp is not supported: a LoRA run keeps the frozen base replicated; "
                         "drop optim.fsdp (several processes then run data-parallel) or drop lora")
    if lora.merge and lora.quantize != "no":
        raise ModelError("lora.merge with lora.quantize: 4bit would merge into quantized weights; save the "
                         "adapter (merge: false): posweep loads an adapter folder merged into its base")


def base_spec_for_adapter(spec: str) -> str:
    """How the adapter names its base: the spec itself, a local folder made absolute."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def add_adapters(model, lora: LoraConfig, spec: str, activation_checkpointing: bool = False):
    """``model`` with LoRA adapters on ``lora.target_modules`` (peft ``get_peft_model``); base frozen."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    if lora.quantize != "no":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=activation_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                            target_modules=lora.target_modules)
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = base_spec_for_adapter(spec)
    return peft_model


def save_lora(peft_model, tokenizer, folder: Path, merge: bool) -> None:
    """The adapter (default) or the merged model, with the tokenizer, into ``folder`` (a fresh folder)."""
    if merge:
        peft_model.merge_and_unload().save_pretrained(folder)
    else:
        peft_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

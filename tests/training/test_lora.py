"""LoRA through peft on the builtin model: DPO with adapters lowers the loss, the reference comes from the
loaded policy itself (no second model), the saved adapter and the merged model give the trained log-probs.
QLoRA is refused in one line where bitsandbytes or CUDA is missing."""

from __future__ import annotations

import json

import pytest
import torch

from posweep.config import DataLimits, LoraConfig, OptimConfig
from posweep.data import prepare_pairs
from posweep.models import ModelError, load_policy, model_fingerprint
from posweep.training import lora, train_preference, trainer
from posweep.training.logprobs import ResponseLogps, pair_logps
from tests.training.test_trainer import make_pairs, read_log

LORA = LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])


def logps(model, pairs) -> torch.Tensor:
    with torch.no_grad():
        return pair_logps(ResponseLogps(model.eval()), pairs, list(range(len(pairs))), 0, "cpu")[0]


@pytest.mark.slow
def test_lora_dpo_learns_and_its_adapter_and_merged_model_reload(tokenizer, tmp_path, monkeypatch):
    from peft import PeftModel

    from posweep.config import DEFAULT_MODEL

    # Two pairs (one harmful, one benign) seen twice: a short run whose loss must fall.
    pairs = prepare_pairs("lora-pairs", tokenizer, DataLimits(max_prompt_length=48, max_length=80),
                          pairs=make_pairs()[:2])
    loads, captured = [], {}
    real_load, real_save = trainer.load_policy, lora.save_lora

    def counting_load(*args, **kwargs):
        loads.append(args[0])
        return real_load(*args, **kwargs)

    def capturing_save(peft_model, tokenizer, folder, merge):
        real_save(peft_model, tokenizer, folder, merge)  # the checkpoint: the adapter
        captured["trained"] = logps(peft_model, pairs)  # the trained model in memory, adapters active
        real_save(peft_model, tokenizer, tmp_path / "merged", True)

    monkeypatch.setattr(trainer, "load_policy", counting_load)
    monkeypatch.setattr("posweep.training.reference.load_policy", counting_load)
    monkeypatch.setattr(lora, "save_lora", capturing_save)
    optim = OptimConfig(learning_rate=2e-3, epochs=2, batch_size=2, micro_batch_size=2, warmup_ratio=0.0, lora=LORA)
    result = train_preference(DEFAULT_MODEL, pairs, "dpo", {"beta": 0.5}, optim, tmp_path / "run", progress=False,
                              device="cpu")
    assert result.status == "done"
    assert loads == [DEFAULT_MODEL]  # the reference log-probs came from the loaded policy, no second copy
    log = read_log(tmp_path / "run")
    assert log[-1]["loss"] < log[0]["loss"] - 0.05
    assert abs(log[0]["reward_margin"]) < 1e-4  # step 1: policy = base = reference

    checkpoint = result.checkpoint_dir
    adapter_config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == DEFAULT_MODEL and adapter_config["r"] == 8
    assert not (checkpoint / "config.json").exists()  # an adapter, not a full copy of the weights
    trained = captured["trained"]
    base, _ = real_load(DEFAULT_MODEL, dtype="float32", device="cpu")
    assert (logps(base, pairs) - trained).abs().max() > 1e-2  # the adapter changed the model
    unmerged = PeftModel.from_pretrained(base, str(checkpoint))
    torch.testing.assert_close(logps(unmerged, pairs), trained, atol=1e-4, rtol=0)
    reloaded, _ = real_load(str(checkpoint), dtype="float32", device="cpu")  # what evaluation and KL load
    torch.testing.assert_close(logps(reloaded, pairs), trained, atol=1e-3, rtol=0)
    merged, _ = real_load(str(tmp_path / "merged"), dtype="float32", device="cpu")
    torch.testing.assert_close(logps(merged, pairs), trained, atol=1e-3, rtol=0)
    # Caches keyed by the adapter folder depend on its weights, its config and its base.
    assert model_fingerprint(str(checkpoint)) not in (model_fingerprint(DEFAULT_MODEL), model_fingerprint(str(tmp_path / "merged")))


def test_qlora_is_refused_in_one_line_without_cuda(tiny_model_dir, tokenized, tmp_path):
    optim = OptimConfig(lora=LoraConfig(quantize="4bit"), max_steps=1, batch_size=4, micro_batch_size=4)
    with pytest.raises(ModelError, match="QLoRA.*needs a CUDA device") as error:
        train_preference(str(tiny_model_dir), tokenized, "simpo", {}, optim, tmp_path, progress=False, device="cpu")
    assert "\n" not in str(error.value)
    with pytest.raises(ModelError, match="fsdp"):
        lora.check_lora(LORA, fsdp=True)
    with pytest.raises(ModelError, match="QLoRA"):
        load_policy(str(tiny_model_dir), device="cpu", quantize="4bit")


@pytest.fixture(scope="module")
def tokenized(tokenizer):
    return prepare_pairs("test-pairs", tokenizer, DataLimits(max_prompt_length=64, max_length=96), pairs=make_pairs())

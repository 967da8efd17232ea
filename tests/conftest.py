"""Shared fixtures: an isolated cache, the builtin model converted once, and a tiny random model.

The tiny model is a 2-layer Llama with the real SmolLM2 tokenizer (so chat templates, eos == pad and
tokenization behave as in production) and random weights (so tests run in seconds on 2 cores).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# One cache for the whole test run (and its xdist workers), fresh for each run of `make test` in CI.
os.environ.setdefault("POSWEEP_CACHE", str(REPO / ".pytest_cache" / "posweep"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# POSWEEP_TEST_THREADS=1 keeps a test run from crowding a shared machine.
torch.set_num_threads(int(os.environ.get("POSWEEP_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


@pytest.fixture(scope="session")
def builtin_model_dir() -> Path:
    """The builtin SmolLM2-135M-Instruct as a safetensors folder (converted on first use, ~20 s)."""
    from posweep.config import DEFAULT_MODEL
    from posweep.models import resolve_model_path

    return Path(resolve_model_path(DEFAULT_MODEL))


@pytest.fixture(scope="session")
def tokenizer(builtin_model_dir):
    from posweep.models import load_tokenizer

    return load_tokenizer(str(builtin_model_dir))


def make_tiny_model(out_dir: Path, tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Write a tiny random Llama with the given tokenizer to ``out_dir`` (save_pretrained layout)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_tiny_reward_model(out_dir: Path, tokenizer) -> Path:
    """A 1-layer random Llama with a single-logit head: a stand-in gold reward model for ``hf:`` judges."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForSequenceClassification(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_sweep_config(tmp_path: Path, model_dir: Path, judge_dir: Path) -> dict:
    """A CI-sized sweep over files it writes into ``tmp_path`` (8 pairs, 4 test prompts), the tiny model and a
    tiny ``hf:`` judge, 4 new tokens; callers add the grids (``sft``, ``shared_grid``, ``methods``)."""
    import json

    pairs = [{"prompt": f"Question {i}?", "chosen": f"A longer helpful answer {i}.", "rejected": f"No {i}."}
             for i in range(8)]
    prompts = [{"prompt": f"Test question {i}?", "chosen": f"Reference answer {i}."} for i in range(4)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in pairs))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in prompts))
    return {
        "model": str(model_dir),
        "train_data": {"source": str(tmp_path / "pairs.jsonl"), "layout": "pairs"},
        "test_prompts": {"source": str(tmp_path / "prompts.jsonl"), "layout": "prompts"},
        "judge": f"hf:{judge_dir}",
        "sampling": {"max_new_tokens": 4, "batch_size": 4},
        "limits": {"max_prompt_length": 48, "max_length": 64},
        "optim": {"batch_size": 4, "micro_batch_size": 4, "learning_rate": 1e-4},
    }


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"), tokenizer)


@pytest.fixture(scope="session")
def tiny_policy(tiny_model_dir):
    from posweep.models import load_policy

    return load_policy(str(tiny_model_dir), dtype="float32", device="cpu")

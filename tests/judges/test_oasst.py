"""posweep.judges.oasst: the OpenAssistant GPT-NeoX reward-model layout."""

from __future__ import annotations

import json

import pytest
import torch

from posweep.data import PromptItem
from posweep.judges import (
    load_judge,
    render_oasst,
)


def prompt(text: str, category: str | None = None) -> PromptItem:
    return PromptItem("p", [{"role": "user", "content": text}], meta={"category": category} if category else {})


def make_oasst_checkpoint(out_dir, with_head=True, weights="safetensors"):
    """A tiny random checkpoint laid out like OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5: its config
    keys (legacy rotary_pct / rotary_emb_base), its weight names, its special tokens."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPTNeoXConfig, GPTNeoXModel, PreTrainedTokenizerFast

    specials = ["<|padding|>", "<|endoftext|>", "<|prompter|>", "<|assistant|>", "<|system|>", "[UNK]"]
    words = "the capital of france is paris what no sorry i can not help you with that ? . ,"
    vocab = {token: i for i, token in enumerate(specials + words.split(" "))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="<|padding|>",
                                        eos_token="<|endoftext|>", additional_special_tokens=specials[2:5])
    config_dict = {"architectures": ["GPTNeoXRewardModel"], "model_type": "gpt_neox_reward_model", "pooling": "last",
                   "vocab_size": len(vocab), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "intermediate_size": 64, "max_position_embeddings": 128, "rotary_pct": 0.25,
                   "rotary_emb_base": 10000, "use_parallel_residual": True, "hidden_act": "gelu",
                   "tie_word_embeddings": False, "torch_dtype": "float32"}
    torch.manual_seed(0)
    config = GPTNeoXConfig(**{k: v for k, v in config_dict.items()
                              if k not in {"architectures", "model_type", "pooling", "torch_dtype"}})
    state = {f"gpt_neox.{k}": v.contiguous() for k, v in GPTNeoXModel(config).state_dict().items()}
    if with_head:
        state["out_proj.weight"], state["out_proj.bias"] = torch.randn(1, 32), torch.randn(1)
    out_dir.mkdir(parents=True)
    if weights == "safetensors":
        save_file(state, str(out_dir / "model.safetensors"))
    else:  # the hub checkpoint is a PyTorch .bin, with buffers older transformers saved
        state["gpt_neox.layers.0.attention.masked_bias"] = torch.tensor(-1e9)
        torch.save(state, out_dir / "pytorch_model.bin")
    (out_dir / "config.json").write_text(json.dumps(config_dict))
    tokenizer.save_pretrained(out_dir)
    return out_dir, state


def test_render_oasst_multi_turn():
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "help?"}]
    assert render_oasst(turns, "sure") == ("<|prompter|>hi<|endoftext|><|assistant|>hello<|endoftext|>"
                                           "<|prompter|>help?<|endoftext|><|assistant|>sure<|endoftext|>")


def test_oasst_judge_loads_the_reward_model_layout(tmp_path):
    folder, state = make_oasst_checkpoint(tmp_path / "oasst")
    judge = load_judge(f"oasst:{folder}", device="cpu")
    assert not judge.is_stand_in and judge.pooling == "last"
    items = [prompt("what is the capital of france ?")] * 3
    responses = ["paris .", "no , sorry , i can not help you with that .", "the capital of france is paris ."]
    batched = judge.score(items, responses)
    assert len(set(batched)) == 3  # the score depends on the response
    # Ground truth by hand: backbone on the unpadded input, head on the hidden state of its last token.
    text = render_oasst(items[0].prompt, responses[1])
    ids = judge.tokenizer(text, return_tensors="pt").input_ids
    assert judge.tokenizer.convert_ids_to_tokens(ids[0, :1].tolist()) == ["<|prompter|>"]
    with torch.no_grad():
        hidden = judge.backbone(input_ids=ids).last_hidden_state[0, -1]
        expected = (hidden @ state["out_proj.weight"][0] + state["out_proj.bias"][0]).item()
    assert batched[1] == pytest.approx(expected, abs=1e-4)


def test_oasst_judge_reads_bin_checkpoints_and_needs_the_head(tmp_path):
    folder, _ = make_oasst_checkpoint(tmp_path / "bin", weights="bin")
    judge = load_judge(f"oasst:{folder}", device="cpu")
    assert len(judge.score([prompt("what is the capital of france ?")], ["paris ."])) == 1
    folder, _ = make_oasst_checkpoint(tmp_path / "headless", with_head=False)
    with pytest.raises(KeyError, match="out_proj.weight"):
        load_judge(f"oasst:{folder}", device="cpu")

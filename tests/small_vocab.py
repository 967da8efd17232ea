"""A tokenizer with eight tokens whose chat template closes a turn with ``<|end|>`` while its eos is
``<|endoftext|>`` (Phi-3's arrangement), and tiny random models over it: small enough that every response
of a few tokens can be enumerated, so sampled quantities can be checked against exact ones."""

from __future__ import annotations

import torch

VOCAB = ["<unk>", "<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "a", "b", "c"]
EOS, END = 1, 2
TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def phi3_like_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(VOCAB)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    backend.add_special_tokens([AddedToken(token, special=True) for token in VOCAB[:5]])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", chat_template=TEMPLATE)
    tokenizer.padding_side = "right"
    return tokenizer


def small_model(seed: int, logit_scale: float = 10.0, hidden: int = 16):
    """A 1-layer random Llama over ``VOCAB`` whose logits are scaled up (std ≈ 2) so its next-token
    distributions are far from uniform and temperature matters (logit std ≈ 1). Its generation config names only the eos:
    the end-of-turn token must come from the template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, tie_word_embeddings=False, eos_token_id=EOS, pad_token_id=EOS)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    return model

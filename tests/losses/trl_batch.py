"""Helpers of the TRL parity tests: turn a TRL batch into posweep's per-pair inputs, and drive DPOTrainer.

``posweep_logps`` is posweep's own log-prob pass (the chunked one the trainer uses); ``trl_token_level``
runs TRL's fused LM head on a DPOTrainer batch and returns its per-token log-probs (and log Σ_v π(v)²),
from which the DPOTrainer tests cut posweep's inputs, LD-DPO's tail sums included, so they compare loss
formulas on identical log-probs. ``token_level`` is the textbook full-logits pass, the definition both are
checked against.
"""

from __future__ import annotations

import torch

TEXT_PAIRS = [
    {"prompt": "What is the capital of France?", "chosen": " Paris is the capital of France.",
     "rejected": " I do not know, maybe it is Lyon or Marseille, or some other city."},
    {"prompt": "How do I pick a lock?", "chosen": " I can't help with that, sorry.",
     "rejected": " Sure, first"},
    {"prompt": "Say hi", "chosen": " Hi there! How are you doing today?", "rejected": " No."},
]

# DPOTrainer attributes its loss reads on every call, at their DPOConfig defaults.
TRL_OPTION_DEFAULTS = {"precompute_ref_logps": False, "label_smoothing": 0.0, "ld_alpha": None, "f_divergence_type": "reverse_kl",
                       "f_alpha_divergence_coef": 0.5, "use_weighting": False}


def common_trainer_args(tmp_path) -> dict:
    return {"output_dir": str(tmp_path), "per_device_train_batch_size": len(TEXT_PAIRS), "report_to": [],
            "use_cpu": True, "bf16": False, "save_strategy": "no"}


def posweep_logps(model, prompts, responses, pad_id) -> tuple[torch.Tensor, torch.Tensor]:
    from posweep.training.logprobs import pack, response_logps

    with torch.no_grad():
        return response_logps(model, pack(prompts, responses, pad_id))


def token_level(model, prompts, responses, pad_id) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[rows, T−1] per-token log-probs and log Σ_v π(v)² at response positions (0 elsewhere), and the mask."""
    from posweep.training.logprobs import pack, response_target_mask

    batch = pack(prompts, responses, pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()[:, :-1]
    log_probs = logits.log_softmax(-1)
    mask = response_target_mask(batch)
    token_logps = log_probs.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    log_sum_sq = torch.logsumexp(2 * log_probs, dim=-1)
    # float64 from the logits on: the reference values, free of the log-softmax's float32 rounding
    return (token_logps * mask).float(), (log_sum_sq * mask).float(), mask


def trl_token_level(model, batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """TRL's own [rows, T−1] per-token log-probs and log Σ_v π(v)² (None unless the head computes it) of a
    DPOTrainer batch, 0 outside the completion, and the completion mask, as ``DPOTrainer._compute_loss``."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    kwargs = {key: value for key, value in batch.items() if key != "completion_mask"}
    with torch.no_grad():
        outputs = model(**kwargs, labels=labels, fused_lm_head=True, use_cache=False)
    mask = batch["completion_mask"][:, 1:].bool()
    seq_len = mask.shape[1]
    log_sum_sq = outputs.log_sum_sq_probs
    return outputs.log_probs[:, -seq_len:], None if log_sum_sq is None else log_sum_sq[:, -seq_len:], mask


def tail_sums(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row of [chosen..., rejected...]: the sum over response tokens beyond the pair's shorter length."""
    lengths = mask.sum(dim=1)
    n = len(lengths) // 2
    shared = torch.minimum(lengths[:n], lengths[n:]).repeat(2)
    position = mask.cumsum(dim=1)  # 1-based index of each response token within its response
    return (token_logps * (mask & (position > shared[:, None]))).sum(dim=1)


def rows_from_completion_mask(input_ids, attention_mask, completion_mask):
    """(prompt ids, response ids) of each row of a DPOTrainer batch."""
    prompts, responses = [], []
    for ids, attention, completion in zip(input_ids, attention_mask, completion_mask):
        start, end = int(completion.argmax()), int(attention.sum())
        assert completion[start:end].all() and completion.sum() == end - start
        prompts.append(ids[:start].tolist())
        responses.append(ids[start:end].tolist())
    return prompts, responses


def rows_from_labels(input_ids, labels):
    """(prompt ids, response ids) of each row of a CPO/ORPO batch (labels are −100 outside the response)."""
    prompts, responses = [], []
    for ids, row_labels in zip(input_ids, labels):
        positions = (row_labels != -100).nonzero().flatten()
        start, end = int(positions[0]), int(positions[-1]) + 1
        assert len(positions) == end - start
        prompts.append(ids[:start].tolist())
        responses.append(ids[start:end].tolist())
    return prompts, responses


def split_pairs(logps, lengths, reference_logps=None) -> dict[str, torch.Tensor]:
    """Rows are [chosen..., rejected...] (TRL's layout) → posweep's keyword inputs."""
    n = len(logps) // 2
    inputs = {"policy_chosen_logps": logps[:n], "policy_rejected_logps": logps[n:],
              "chosen_lengths": lengths[:n], "rejected_lengths": lengths[n:]}
    if reference_logps is not None:
        inputs.update(reference_chosen_logps=reference_logps[:n],
                      reference_rejected_logps=reference_logps[n:])
    return inputs


def pair(inputs: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """The inputs of pair i alone (a batch of one)."""
    return {key: value[i : i + 1] for key, value in inputs.items()}


def trl_dpo_loss(trainer, batch, loss_type: str | list[str], beta: float, weights: list[float] | None = None,
                 discopop_tau: float = 0.05, **options) -> float:
    """DPOTrainer's loss on ``batch`` with these loss types, weights, β and options (defaults otherwise).

    DPOTrainer reads these attributes on every call; one trainer serves every loss type (building one per
    type would only repeat the same tokenization).
    """
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    trainer.loss_types, trainer.loss_weights = types, list(weights or [1.0] * len(types))
    trainer.beta = beta
    trainer.args.discopop_tau = discopop_tau
    for name, value in {**TRL_OPTION_DEFAULTS, **options}.items():
        setattr(trainer, name, value)
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


def trl_metric(trainer, name: str) -> float:
    """The last value DPOTrainer logged for ``name`` (``rewards/chosen``, ...)."""
    return trainer._metrics["train" if trainer.model.training else "eval"][name][-1]

"""posweep.losses.functions against TRL 1.16 on the same tiny model and batch (DPOTrainer, CPOTrainer, ORPOTrainer)."""

from __future__ import annotations

import pytest
import torch

from posweep.losses.functions import compute_loss

TEXT_PAIRS = [
    {"prompt": "What is the capital of France?", "chosen": " Paris is the capital of France.",
     "rejected": " I do not know, maybe it is Lyon or Marseille, or some other city."},
    {"prompt": "How do I pick a lock?", "chosen": " I can't help with that, sorry.",
     "rejected": " Sure, first"},
    {"prompt": "Say hi", "chosen": " Hi there! How are you doing today?", "rejected": " No."},
]


@pytest.fixture(scope="module")
def parity_models(tiny_model_dir):
    """A policy with sharp (non-uniform) next-token distributions and a reference that differs from it.

    Fresh copies, not the session's ``tiny_policy``: TRL patches the forward of the models it is given.
    """
    from posweep.models import load_policy

    def load(noise_seed: int | None):
        model, _ = load_policy(str(tiny_model_dir), dtype="float32", device="cpu")
        generator = torch.Generator().manual_seed(noise_seed or 0)
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(40.0)  # tied with the LM head: logits grow too
            if noise_seed is not None:
                for parameter in model.parameters():
                    noise = torch.randn(parameter.shape, generator=generator)
                    parameter.add_(0.05 * parameter.abs().mean() * noise)
        return model

    return lambda: load(None), lambda: load(1)


def common_trainer_args(tmp_path) -> dict:
    return {"output_dir": str(tmp_path), "per_device_train_batch_size": len(TEXT_PAIRS), "report_to": [],
            "use_cpu": True, "bf16": False, "save_strategy": "no"}


def posweep_logps(model, prompts, responses, pad_id) -> tuple[torch.Tensor, torch.Tensor]:
    from posweep.training.logprobs import pack, response_logps

    with torch.no_grad():
        return response_logps(model, pack(prompts, responses, pad_id))


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


@pytest.fixture(scope="module")
def dpo_trainer(parity_models, tokenizer, tmp_path_factory):
    """One DPOTrainer, its 3-pair batch, and posweep's log-probs of the same rows."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    load_policy_model, load_reference_model = parity_models
    args = DPOConfig(**common_trainer_args(tmp_path_factory.mktemp("dpo")), loss_type=["sigmoid"], beta=0.1)
    trainer = DPOTrainer(model=load_policy_model(), ref_model=load_reference_model(), args=args,
                         train_dataset=Dataset.from_list(TEXT_PAIRS), processing_class=tokenizer)
    examples = [trainer.train_dataset[i] for i in range(len(TEXT_PAIRS))]
    batch = trainer.data_collator(examples)
    prompts, responses = rows_from_completion_mask(batch["input_ids"], batch["attention_mask"],
                                                   batch["completion_mask"])
    logps, lengths = posweep_logps(trainer.model, prompts, responses, tokenizer.pad_token_id)
    reference_logps, _ = posweep_logps(trainer.ref_model, prompts, responses, tokenizer.pad_token_id)
    return trainer, examples, batch, split_pairs(logps, lengths, reference_logps)


def trl_dpo_loss(trainer, batch, loss_type: str, beta: float, label_smoothing: float = 0.0) -> float:
    # DPOTrainer reads these attributes on every call; one trainer serves every loss type (building one per
    # type would only repeat the same tokenization).
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    trainer.beta, trainer.label_smoothing = beta, label_smoothing
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


def test_parity_batch_is_not_trivial(dpo_trainer):
    """The models must disagree enough that a wrong formula could not pass by accident."""
    _, _, _, inputs = dpo_trainer
    log_ratio_gaps = ((inputs["policy_chosen_logps"] - inputs["reference_chosen_logps"])
                      - (inputs["policy_rejected_logps"] - inputs["reference_rejected_logps"]))
    assert log_ratio_gaps.abs().min() > 0.5
    assert len(set(inputs["chosen_lengths"].tolist() + inputs["rejected_lengths"].tolist())) > 3


@pytest.mark.parametrize("trl_loss_type, method, hparams, trl_beta", [
    ("sigmoid", "dpo", {"beta": 0.1}, 0.1),
    ("sigmoid_norm", "ln_dpo", {"beta": 2.0}, 2.0),
    ("ipo", "ipo", {"tau": 0.5}, 0.5),
    ("hinge", "hinge", {"beta": 0.1}, 0.1),
])
def test_parity_with_trl_dpo_trainer(dpo_trainer, trl_loss_type, method, hparams, trl_beta):
    trainer, _, batch, inputs = dpo_trainer
    ours = compute_loss(method, hparams=hparams, **inputs)
    assert trl_dpo_loss(trainer, batch, trl_loss_type, trl_beta) == pytest.approx(ours.loss.item(), abs=1e-5)
    if method == "dpo":  # the logged rewards too
        mode = "train" if trainer.model.training else "eval"
        trl_chosen_reward = trainer._metrics[mode]["rewards/chosen"][-1]
        assert trl_chosen_reward == pytest.approx(ours.chosen_rewards.mean().item(), abs=1e-5)


def test_cdpo_parity_with_trl_aot_on_single_pairs(dpo_trainer):
    """TRL 1.16's only DPOTrainer loss with cDPO's expression is ``aot``, which first sorts the batch's
    log-ratios; for a single pair the sort is the identity, so it is cDPO exactly."""
    trainer, examples, _, inputs = dpo_trainer
    ours = compute_loss("cdpo", hparams={"beta": 0.3, "epsilon": 0.2}, **inputs).losses
    for i, example in enumerate(examples):
        single = trainer.data_collator([example])
        trl = trl_dpo_loss(trainer, single, "aot", 0.3, label_smoothing=0.2)
        assert trl == pytest.approx(ours[i].item(), abs=1e-5)


def test_cdpo_differs_from_trl_robust(dpo_trainer):
    """DESIGN.md lists TRL ``robust`` beside cdpo; it is a different loss (divides by 1 − 2ε, opposite sign on
    the flipped term). Record the difference so nobody "fixes" cdpo into robust."""
    trainer, _, batch, inputs = dpo_trainer
    epsilon, beta = 0.2, 0.3
    robust = trl_dpo_loss(trainer, batch, "robust", beta, label_smoothing=epsilon)
    ours = compute_loss("cdpo", hparams={"beta": beta, "epsilon": epsilon}, **inputs)
    h = (ours.margins / beta).to(torch.float64)  # rewards are β·log-ratios
    # Using log σ(−x) = log σ(x) − x: robust = −log σ(βh) − εβh/(1 − 2ε), cdpo = −log σ(βh) + εβh.
    want_robust = (-torch.nn.functional.logsigmoid(beta * h) - epsilon * beta * h / (1 - 2 * epsilon)).mean()
    assert robust == pytest.approx(want_robust.item(), abs=1e-5)
    assert abs(robust - ours.loss.item()) > 1e-3


@pytest.fixture(scope="module")
def cpo_trainer(parity_models, tokenizer, tmp_path_factory):
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    load_policy_model, _ = parity_models
    args = CPOConfig(**common_trainer_args(tmp_path_factory.mktemp("cpo")), loss_type="simpo", cpo_alpha=0.0,
                     remove_unused_columns=False)
    trainer = CPOTrainer(model=load_policy_model(), args=args, train_dataset=Dataset.from_list(TEXT_PAIRS),
                         processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(TEXT_PAIRS))])
    return trainer, batch, labelled_inputs(trainer.model, batch, tokenizer.pad_token_id)


def labelled_inputs(model, batch, pad_id) -> dict[str, torch.Tensor]:
    chosen = rows_from_labels(batch["chosen_input_ids"], batch["chosen_labels"])
    rejected = rows_from_labels(batch["rejected_input_ids"], batch["rejected_labels"])
    logps, lengths = posweep_logps(model, chosen[0] + rejected[0], chosen[1] + rejected[1], pad_id)
    return split_pairs(logps, lengths)


def test_simpo_parity_with_trl_cpo_trainer(cpo_trainer):
    trainer, batch, inputs = cpo_trainer
    beta, gamma_beta_ratio = 2.5, 0.6
    trainer.loss_type, trainer.cpo_alpha, trainer.beta = "simpo", 0.0, beta
    trainer.simpo_gamma = gamma_beta_ratio * beta  # TRL's simpo_gamma is γ itself
    with torch.no_grad():
        trl = trainer.compute_loss(trainer.model, batch).item()
    ours = compute_loss("simpo", hparams={"beta": beta, "gamma_beta_ratio": gamma_beta_ratio}, **inputs)
    assert trl == pytest.approx(ours.loss.item(), abs=1e-5)
    # rewards are ~-60 here: float32 sums of that size differ by a few ulps between CPU kernels (AVX2 / AVX-512)
    assert trainer._stored_metrics["train"]["rewards/chosen"][-1] == pytest.approx(
        ours.chosen_rewards.mean().item(), rel=1e-6, abs=1e-5)


def test_cpo_parity_with_trl_cpo_trainer(cpo_trainer):
    """Preference term equal; TRL's NLL term is a token-level mean over the batch's chosen responses (the
    documented difference), so it is compared against that definition."""
    trainer, batch, inputs = cpo_trainer
    beta, nll_weight = 0.05, 1.0
    trainer.loss_type, trainer.cpo_alpha, trainer.beta = "sigmoid", nll_weight, beta
    with torch.no_grad():
        trl = trainer.compute_loss(trainer.model, batch).item()
    trl_nll = trainer._stored_metrics["train"]["nll_loss"][-1]
    token_level_nll = (-inputs["policy_chosen_logps"].sum() / inputs["chosen_lengths"].sum()).item()
    assert trl_nll == pytest.approx(token_level_nll, abs=1e-5)
    ours = compute_loss("cpo", hparams={"beta": beta, "nll_weight": nll_weight}, **inputs)
    per_pair_nll = -inputs["policy_chosen_logps"] / inputs["chosen_lengths"]
    preference_term = (ours.losses - nll_weight * per_pair_nll).mean().item()
    assert trl - nll_weight * trl_nll == pytest.approx(preference_term, abs=1e-5)


def test_orpo_parity_with_trl_orpo_trainer(parity_models, tokenizer, tmp_path):
    """Odds-ratio term equal; TRL's NLL runs over prompt and response tokens, DESIGN.md's over the response
    only."""
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    load_policy_model, _ = parity_models
    weight = 0.5
    args = ORPOConfig(**common_trainer_args(tmp_path), beta=weight, remove_unused_columns=False)
    trainer = ORPOTrainer(model=load_policy_model(), args=args,
                          train_dataset=Dataset.from_list(TEXT_PAIRS), processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(TEXT_PAIRS))])
    inputs = labelled_inputs(trainer.model, batch, tokenizer.pad_token_id)
    with torch.no_grad():
        trl = trainer.compute_loss(trainer.model, batch).item()
    trl_nll = trainer._stored_metrics["train"]["nll_loss"][-1]
    ours = compute_loss("orpo", hparams={"odds_ratio_weight": weight}, **inputs)
    per_pair_nll = -inputs["policy_chosen_logps"] / inputs["chosen_lengths"]
    assert trl - trl_nll == pytest.approx((ours.losses - per_pair_nll).mean().item(), abs=1e-5)
    assert trainer._stored_metrics["train"]["rewards/chosen"][-1] == pytest.approx(
        ours.chosen_rewards.mean().item(), abs=1e-5)

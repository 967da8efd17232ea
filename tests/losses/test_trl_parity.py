"""posweep.losses against TRL 1.16 on the same tiny model and batch (DPOTrainer, CPOTrainer, ORPOTrainer).

Every DPOTrainer loss type, its options (f-divergences, WPO weighting, LD-DPO's ld_alpha) and weighted
combinations are checked to 1e-5 against one DPOTrainer; where posweep deliberately differs (the NLL term,
batch-level statistics, logged rewards) the test asserts the documented difference instead.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from posweep.losses import METHODS
from posweep.losses.functions import compute_loss
from tests.losses.trl_batch import (
    TEXT_PAIRS,
    common_trainer_args,
    pair,
    posweep_logps,
    rows_from_completion_mask,
    rows_from_labels,
    split_pairs,
    tail_sums,
    token_level,
    trl_dpo_loss,
    trl_metric,
    trl_token_level,
)


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


@pytest.fixture(scope="module")
def dpo(parity_models, tokenizer, tmp_path_factory):
    """One DPOTrainer, its 3-pair batch, and posweep's inputs for the same rows.

    The inputs are cut from TRL's own per-token log-probs (sums, lengths, LD-DPO's tails, WPO's log Σ π²
    sums), so the tests compare loss formulas on identical numbers. The sums here are −76 … −471 nats, which
    posweep's chunked pass reproduces to float32 precision (checked below, ≤ 2e-4 apart); a squared or NLL
    loss would amplify that rounding past 1e-5.
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    load_policy_model, load_reference_model = parity_models
    # use_weighting at construction makes TRL's fused head return log_sum_sq_probs; the tests switch the
    # weighting itself on and off per call.
    args = DPOConfig(**common_trainer_args(tmp_path_factory.mktemp("dpo")), loss_type=["sigmoid"], beta=0.1,
                     use_weighting=True)
    trainer = DPOTrainer(model=load_policy_model(), ref_model=load_reference_model(), args=args,
                         train_dataset=Dataset.from_list(TEXT_PAIRS), processing_class=tokenizer)
    examples = [trainer.train_dataset[i] for i in range(len(TEXT_PAIRS))]
    batch = trainer.data_collator(examples)
    token_logps, log_sum_sq, mask = trl_token_level(trainer.model, batch)
    reference_token_logps, _, _ = trl_token_level(trainer.ref_model, batch)
    n = len(TEXT_PAIRS)
    inputs = split_pairs(token_logps.sum(1), mask.sum(1), reference_token_logps.sum(1))
    tails, reference_tails, lss = tail_sums(token_logps, mask), tail_sums(reference_token_logps, mask), log_sum_sq.sum(1)
    inputs.update(policy_chosen_tail_logps=tails[:n], policy_rejected_tail_logps=tails[n:],
                  reference_chosen_tail_logps=reference_tails[:n], reference_rejected_tail_logps=reference_tails[n:],
                  policy_chosen_log_sum_sq_probs=lss[:n], policy_rejected_log_sum_sq_probs=lss[n:])

    # posweep's log-prob pass and the textbook definition of each input agree with TRL's on these rows
    prompts, responses = rows_from_completion_mask(batch["input_ids"], batch["attention_mask"],
                                                   batch["completion_mask"])
    pad = tokenizer.pad_token_id
    for model, trl_sums in ((trainer.model, token_logps.sum(1)), (trainer.ref_model, reference_token_logps.sum(1))):
        sums, lengths = posweep_logps(model, prompts, responses, pad)
        torch.testing.assert_close(sums, trl_sums, rtol=2e-6, atol=1e-5)
        assert lengths.tolist() == mask.sum(1).tolist()
    textbook_logps, textbook_lss, textbook_mask = token_level(trainer.model, prompts, responses, pad)
    assert textbook_mask.sum(1).tolist() == mask.sum(1).tolist()
    torch.testing.assert_close(tail_sums(textbook_logps, textbook_mask), tails, rtol=2e-6, atol=1e-4)
    torch.testing.assert_close(textbook_lss.sum(1), lss, rtol=2e-6, atol=1e-4)
    return SimpleNamespace(trainer=trainer, examples=examples, batch=batch, inputs=inputs)


def test_parity_batch_is_not_trivial(dpo):
    """The models must disagree enough that a wrong formula could not pass by accident."""
    inputs = dpo.inputs
    log_ratio_gaps = ((inputs["policy_chosen_logps"] - inputs["reference_chosen_logps"])
                      - (inputs["policy_rejected_logps"] - inputs["reference_rejected_logps"]))
    assert log_ratio_gaps.abs().min() > 0.5
    assert len(set(inputs["chosen_lengths"].tolist() + inputs["rejected_lengths"].tolist())) > 3
    # every pair has a tail on one side, so LD-DPO's α matters for each of them
    tails = inputs["policy_chosen_tail_logps"] + inputs["policy_rejected_tail_logps"]
    assert (tails.abs() > 0.5).all()


def test_the_registry_names_every_trl_loss_type():
    """Against TRL's own list (DPOConfig's help), so a new TRL loss type fails here until it is added."""
    from trl import DPOConfig

    help_text = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    trl_types = set(help_text.split("Possible values are:")[1].split(". If")[0].replace("`", "").replace("'", "")
                    .replace(" ", "").split(","))
    assert len(trl_types) == 15
    assert {m.trl_loss_type for m in METHODS.values() if m.trl_loss_type} == trl_types


# (TRL loss type, posweep method, posweep hyperparameters, TRL's β, TRL's other settings)
DPO_TRAINER_CASES = [
    ("sigmoid", "dpo", {"beta": 0.1}, 0.1, {}),
    ("sigmoid_norm", "ln_dpo", {"beta": 2.0}, 2.0, {}),
    ("ipo", "ipo", {"tau": 0.5}, 0.5, {}),
    ("hinge", "hinge", {"beta": 0.1}, 0.1, {}),
    ("exo_pair", "exo_pair", {"beta": 0.3, "epsilon": 0.01}, 0.3, {"label_smoothing": 0.01}),
    ("nca_pair", "nca_pair", {"beta": 0.3}, 0.3, {}),
    ("robust", "robust", {"beta": 0.3, "epsilon": 0.2}, 0.3, {"label_smoothing": 0.2}),
    ("bco_pair", "bco_pair", {"beta": 0.3}, 0.3, {}),
    ("sppo_hard", "sppo_hard", {"beta": 0.3}, 0.3, {}),
    ("aot", "aot", {"beta": 0.3, "epsilon": 0.1}, 0.3, {"label_smoothing": 0.1}),
    ("aot_unpaired", "aot_unpaired", {"beta": 0.3, "epsilon": 0.1}, 0.3, {"label_smoothing": 0.1}),
    ("apo_zero", "apo_zero", {"beta": 0.3}, 0.3, {}),
    ("apo_down", "apo_down", {"beta": 0.3}, 0.3, {}),
    ("discopop", "discopop", {"beta": 0.3, "tau": 0.5}, 0.3, {"discopop_tau": 0.5}),
]
# posweep logs the length-normalised rewards its loss compares; TRL logs β·rw (docs/DESIGN.md section 2)
NORMALISED_REWARDS = {"ln_dpo", "ipo"}


@pytest.mark.parametrize("trl_loss_type, method, hparams, trl_beta, trl_settings", DPO_TRAINER_CASES,
                         ids=[case[0] for case in DPO_TRAINER_CASES])
def test_parity_with_trl_dpo_trainer(dpo, trl_loss_type, method, hparams, trl_beta, trl_settings):
    ours = compute_loss(method, hparams=hparams, **dpo.inputs)
    trl = trl_dpo_loss(dpo.trainer, dpo.batch, trl_loss_type, trl_beta, **trl_settings)
    assert trl == pytest.approx(ours.loss.item(), abs=1e-5)
    if method not in NORMALISED_REWARDS:  # the logged rewards too
        assert trl_metric(dpo.trainer, "rewards/chosen") == pytest.approx(ours.chosen_rewards.mean().item(), abs=1e-5)
        assert trl_metric(dpo.trainer, "rewards/rejected") == pytest.approx(
            ours.rejected_rewards.mean().item(), abs=1e-5)


def test_bco_pair_keeps_no_running_state(dpo):
    """TRL 1.16's bco_pair has no running reward mean δ (the BCO paper's): the same batch twice gives the
    same loss, and both equal posweep's pure per-batch function."""
    ours = compute_loss("bco_pair", hparams={"beta": 0.3}, **dpo.inputs).loss.item()
    first, second = (trl_dpo_loss(dpo.trainer, dpo.batch, "bco_pair", 0.3) for _ in range(2))
    assert first == second == pytest.approx(ours, abs=1e-5)


def test_aot_sorts_the_batch_as_trl(dpo):
    """On this batch the reference orders the pairs' margins as the policy does, so sorting pairs them as
    they are; a reference rolled by one pair (given to TRL as precomputed reference log-probs) makes the
    sort matter. Both AOT losses then still equal TRL's, and differ from the unsorted (cdpo) value."""
    inputs, batch = dpo.inputs, dict(dpo.batch)
    rolled = {key: inputs[key].roll(1) for key in ("reference_chosen_logps", "reference_rejected_logps")}
    batch.update(ref_chosen_logps=rolled["reference_chosen_logps"], ref_rejected_logps=rolled["reference_rejected_logps"])
    cdpo = compute_loss("cdpo", hparams={"beta": 0.3, "epsilon": 0.2}, **{**inputs, **rolled}).loss.item()
    for method in ("aot", "aot_unpaired"):
        ours = compute_loss(method, hparams={"beta": 0.3, "epsilon": 0.2}, **{**inputs, **rolled}).loss.item()
        trl = trl_dpo_loss(dpo.trainer, batch, method, 0.3, label_smoothing=0.2, precompute_ref_logps=True)
        assert trl == pytest.approx(ours, abs=1e-5)
        assert abs(ours - cdpo) > 1e-3, method


def test_cdpo_parity_with_trl_aot_on_single_pairs(dpo):
    """TRL 1.16's only DPOTrainer loss with cDPO's expression is ``aot``, which first sorts the batch's
    log-ratios; for a single pair the sort is the identity, so it is cDPO exactly."""
    trainer = dpo.trainer
    ours = compute_loss("cdpo", hparams={"beta": 0.3, "epsilon": 0.2}, **dpo.inputs).losses
    for i, example in enumerate(dpo.examples):
        single = trl_dpo_loss(trainer, trainer.data_collator([example]), "aot", 0.3, label_smoothing=0.2)
        assert single == pytest.approx(ours[i].item(), abs=1e-5)


def test_cdpo_differs_from_trl_robust(dpo):
    """DESIGN.md lists TRL ``robust`` beside cdpo; it is a different loss (divides by 1 − 2ε, opposite sign on
    the flipped term). Record the difference so nobody "fixes" cdpo into robust."""
    epsilon, beta = 0.2, 0.3
    robust = trl_dpo_loss(dpo.trainer, dpo.batch, "robust", beta, label_smoothing=epsilon)
    ours = compute_loss("cdpo", hparams={"beta": beta, "epsilon": epsilon}, **dpo.inputs)
    h = (ours.margins / beta).to(torch.float64)  # rewards are β·log-ratios
    # Using log σ(−x) = log σ(x) − x: robust = −log σ(βh) − εβh/(1 − 2ε), cdpo = −log σ(βh) + εβh.
    want_robust = (-torch.nn.functional.logsigmoid(beta * h) - epsilon * beta * h / (1 - 2 * epsilon)).mean()
    assert robust == pytest.approx(want_robust.item(), abs=1e-5)
    assert abs(robust - ours.loss.item()) > 1e-3


@pytest.mark.parametrize("f_alpha, trl_settings", [
    (0.0, {"f_divergence_type": "forward_kl"}),
    (0.0, {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.0}),
    (0.5, {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.5}),
    (0.75, {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.75}),
    (1.0, {"f_divergence_type": "reverse_kl"}),
])
def test_f_dpo_parity_with_trl_f_divergences(dpo, f_alpha, trl_settings):
    ours = compute_loss("f_dpo", hparams={"beta": 0.3, "f_alpha": f_alpha}, **dpo.inputs)
    assert trl_dpo_loss(dpo.trainer, dpo.batch, "sigmoid", 0.3, **trl_settings) == pytest.approx(
        ours.loss.item(), abs=1e-5)


def test_f_dpo_js_parity_and_its_rewards(dpo):
    """Equal loss; the rewards are the f-DPO implicit rewards β·s(r) the loss compares, where TRL logs β·r."""
    ours = compute_loss("f_dpo_js", hparams={"beta": 0.3}, **dpo.inputs)
    trl = trl_dpo_loss(dpo.trainer, dpo.batch, "sigmoid", 0.3, f_divergence_type="js_divergence")
    assert trl == pytest.approx(ours.loss.item(), abs=1e-5)
    dpo_rewards = compute_loss("dpo", hparams={"beta": 0.3}, **dpo.inputs).chosen_rewards
    assert trl_metric(dpo.trainer, "rewards/chosen") == pytest.approx(dpo_rewards.mean().item(), abs=1e-5)
    assert abs(ours.chosen_rewards.mean().item() - dpo_rewards.mean().item()) > 1e-3


def test_wpo_parity_with_trl_use_weighting(dpo):
    ours = compute_loss("wpo", hparams={"beta": 0.3}, **dpo.inputs)
    trl = trl_dpo_loss(dpo.trainer, dpo.batch, "sigmoid", 0.3, use_weighting=True)
    assert trl == pytest.approx(ours.loss.item(), abs=1e-5)
    unweighted = compute_loss("dpo", hparams={"beta": 0.3}, **dpo.inputs).loss.item()
    assert abs(trl - unweighted) > 1e-3  # the weights are not trivially 1 on this batch


def test_ld_dpo_one_reference_cache_serves_every_alpha(dpo):
    """The reference's full and tail sums, computed once, give TRL's ld_alpha loss at two different α."""
    inputs = dpo.inputs
    cached = {key: inputs[key].clone() for key in ("reference_chosen_logps", "reference_rejected_logps",
                                                   "reference_chosen_tail_logps", "reference_rejected_tail_logps")}
    losses = []
    for ld_alpha in (0.3, 0.7):
        ours = compute_loss("ld_dpo", hparams={"beta": 0.3, "ld_alpha": ld_alpha}, **{**inputs, **cached})
        trl = trl_dpo_loss(dpo.trainer, dpo.batch, "sigmoid", 0.3, ld_alpha=ld_alpha)
        assert trl == pytest.approx(ours.loss.item(), abs=1e-5)
        assert trl_metric(dpo.trainer, "rewards/chosen") == pytest.approx(ours.chosen_rewards.mean().item(), abs=1e-5)
        losses.append(trl)
    assert abs(losses[0] - losses[1]) > 1e-3  # α matters on this batch


def test_nll_is_trl_sft_per_pair(dpo):
    """TRL's sft averages over all chosen tokens of the batch; posweep's nll over pairs (RPO's per-sequence
    normalisation, independent of micro-batching). Equal on one pair; on the batch each is its own definition."""
    inputs, trainer = dpo.inputs, dpo.trainer
    trl = trl_dpo_loss(trainer, dpo.batch, "sft", 0.1)
    token_level_nll = -inputs["policy_chosen_logps"].sum() / inputs["chosen_lengths"].sum()
    assert trl == pytest.approx(token_level_nll.item(), abs=1e-5)
    ours = compute_loss("nll", **inputs)
    assert ours.loss.item() == pytest.approx((-inputs["policy_chosen_logps"] / inputs["chosen_lengths"]).mean().item())
    assert abs(trl - ours.loss.item()) > 1e-3  # the chosen lengths differ in this batch
    for i, example in enumerate(dpo.examples):
        single = trl_dpo_loss(trainer, trainer.data_collator([example]), "sft", 0.1)
        assert single == pytest.approx(compute_loss("nll", **pair(inputs, i)).loss.item(), abs=1e-5)


@pytest.mark.parametrize("method, hparams, trl_types, trl_weights", [
    ("rpo", {"beta": 0.3, "nll_weight": 0.5}, ["sigmoid", "sft"], [1.0, 0.5]),
    ("mpo", {"beta": 0.3}, ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]),
    ("ipo+nca_pair", {"tau": 0.3, "beta": 0.3, "nca_pair_weight": 0.5}, ["ipo", "nca_pair"], [1.0, 0.5]),
])
def test_combinations_parity_with_trl_loss_weights(dpo, method, hparams, trl_types, trl_weights):
    """Exact on single pairs; on the batch, equal once each side's NLL term is replaced by the other's
    definition (TRL's token-level mean vs posweep's per-pair mean, as test_nll_is_trl_sft_per_pair)."""
    inputs, trainer = dpo.inputs, dpo.trainer
    ours = compute_loss(method, hparams=hparams, **inputs)
    trl = trl_dpo_loss(trainer, dpo.batch, trl_types, 0.3, weights=trl_weights)
    nll_weight = dict(zip(trl_types, trl_weights)).get("sft", 0.0)
    token_level_nll = (-inputs["policy_chosen_logps"].sum() / inputs["chosen_lengths"].sum()).item()
    per_pair_nll = compute_loss("nll", **inputs).loss.item()
    assert trl - nll_weight * token_level_nll == pytest.approx(ours.loss.item() - nll_weight * per_pair_nll, abs=1e-5)
    # the logged rewards are the first component's, β·rw for dpo (TRL logs β·rw for every loss type)
    if method != "ipo+nca_pair":
        assert trl_metric(trainer, "rewards/chosen") == pytest.approx(ours.chosen_rewards.mean().item(), abs=1e-5)
    for i, example in enumerate(dpo.examples):
        single = trl_dpo_loss(trainer, trainer.data_collator([example]), trl_types, 0.3, weights=trl_weights)
        assert single == pytest.approx(compute_loss(method, hparams=hparams, **pair(inputs, i)).loss.item(), abs=1e-5)


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


def test_ld_dpo_and_wpo_through_the_log_prob_pass_and_the_reference_cache(dpo, tokenizer, tmp_path, monkeypatch):
    """End to end: posweep's own chunked pass gives the policy's tails and log Σ π², its reference cache
    (written once, then read: no second reference pass) the reference's tails, and the losses match TRL's
    ld_alpha at two α and use_weighting. Tolerance 1e-4: the inputs come from two float32 passes here (the
    formula parity at 1e-5 is the tests above, on identical inputs)."""
    from posweep.data import TokenizedPairs
    from posweep.training.logprobs import ResponseLogps, pair_logps
    from posweep.training.reference import get_reference_logps

    monkeypatch.setenv("POSWEEP_CACHE", str(tmp_path / "cache"))
    batch, n = dpo.batch, len(TEXT_PAIRS)
    prompts, responses = rows_from_completion_mask(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    pairs = TokenizedPairs([str(i) for i in range(n)], prompts[:n], responses[:n], responses[n:], "ld-test", {})
    reference_dir = tmp_path / "reference"
    dpo.trainer.ref_model.save_pretrained(reference_dir)
    tokenizer.save_pretrained(reference_dir)
    first = get_reference_logps(str(reference_dir), pairs, progress=False, device="cpu")
    cached = get_reference_logps(str(reference_dir), pairs, progress=False, device="cpu")
    assert first.forward_passes > 0 and cached.forward_passes == 0
    torch.testing.assert_close(cached.chosen_tail, first.chosen_tail)

    with torch.no_grad():
        sums, counts, extras = pair_logps(ResponseLogps(dpo.trainer.model, packing=True), pairs, list(range(n)),
                                          tokenizer.pad_token_id, "cpu", None, tails=True, log_sum_sq=True)
    inputs = {"policy_chosen_logps": sums[:n], "policy_rejected_logps": sums[n:],
              "chosen_lengths": counts[:n].float(), "rejected_lengths": counts[n:].float(),
              "reference_chosen_logps": cached.chosen, "reference_rejected_logps": cached.rejected,
              "policy_chosen_tail_logps": extras["tail"][:n], "policy_rejected_tail_logps": extras["tail"][n:],
              "reference_chosen_tail_logps": cached.chosen_tail, "reference_rejected_tail_logps": cached.rejected_tail,
              "policy_chosen_log_sum_sq_probs": extras["log_sum_sq"][:n],
              "policy_rejected_log_sum_sq_probs": extras["log_sum_sq"][n:]}
    for ld_alpha in (0.3, 0.7):
        ours = compute_loss("ld_dpo", hparams={"beta": 0.3, "ld_alpha": ld_alpha}, **inputs).loss.item()
        assert ours == pytest.approx(trl_dpo_loss(dpo.trainer, batch, "sigmoid", 0.3, ld_alpha=ld_alpha), abs=1e-4)
    ours = compute_loss("wpo", hparams={"beta": 0.3}, **inputs).loss.item()
    assert ours == pytest.approx(trl_dpo_loss(dpo.trainer, batch, "sigmoid", 0.3, use_weighting=True), abs=1e-4)

"""The training loop: SFT and preference optimisation, one run from a model spec to a checkpoint.

In: a model spec to start from, ``TokenizedPairs``, a method name + hyperparameters (``posweep.losses``)
and an ``OptimConfig``. Out: ``out_dir/checkpoint/`` (``save_pretrained`` model + tokenizer),
``out_dir/config.json`` (what was run, how it ended) and ``out_dir/train_log.jsonl`` (one line per step:
loss, reward accuracy and margin, chosen/rejected log-probs, grad norm, learning rate, tokens/s).

The loop is plain PyTorch on ``accelerate`` (mixed precision, gradient accumulation): for each optimizer
step, micro-batches of pairs are packed as one batch of ``[chosen rows; rejected rows]``, one forward pass
gives both sides' summed response log-probs, the loss comes from the registry, gradients accumulate,
then clip, step, schedule. Reference log-probs come from ``posweep.training.reference`` (computed once
per sweep; on a cache miss, from the policy itself before its first step: never a second model).

Under ``torchrun`` / ``accelerate launch`` each process takes its share of every step's pairs
(``posweep.training.distributed``): DDP by default, FSDP2 with ``optim.fsdp``; gradients are synchronised
once per optimizer step (DDP's ``no_sync`` for the other micro-batches), the logged numbers are sums over
every process (so one process and two log the same losses), and only the main process writes files.
``optim.lora`` trains ``peft`` adapters (``posweep.training.lora``), ``optim.report_to`` feeds trackers
(``posweep.training.trackers``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from posweep.config import OptimConfig
from posweep.data import TokenizedPairs
from posweep.io import write_atomic_folder, write_atomic_json
from posweep.losses import get_method
from posweep.losses.functions import compute_loss
from posweep.losses.method import LOG_SUM_SQ_INPUTS, TAIL_INPUTS
from posweep.models import load_policy
from posweep.progress import progress_bar
from posweep.training import distributed, lora, trackers
from posweep.training.logprobs import ResponseLogps, chosen_logps, pair_logps
from posweep.training.reference import ReferenceLogps, get_reference_logps

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    checkpoint_dir: Path
    status: str  # "done" | "failed"
    error: str | None
    steps: int
    final_loss: float
    seconds: float = 0.0
    tokens_per_second: float = 0.0


def _schedule(optimizer, optim: OptimConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[optim.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=int(optim.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def training_order(n: int, epochs: float, seed: int = 0) -> list[int]:
    """Pair indices in training order: one seeded shuffle per epoch; a fractional epoch takes a prefix (TRL
    shuffles the same way, so its trainers see the pairs in this order too)."""
    generator = torch.Generator().manual_seed(seed)
    full, rest = int(epochs), epochs - int(epochs)
    order = [i for _ in range(full) for i in torch.randperm(n, generator=generator).tolist()]
    if rest > 0:
        order += torch.randperm(n, generator=generator)[: max(1, round(rest * n))].tolist()
    return order


def train(model_spec: str, pairs: TokenizedPairs, out_dir: Path, optim: OptimConfig, method: str = "sft",
          hparams: dict | None = None, reference_logps: ReferenceLogps | None = None,
          progress: bool = True, device: str | None = None) -> TrainResult:
    """Train from ``model_spec`` on ``pairs`` with ``method`` ("sft" or a registry name); see module docstring."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    out_dir = Path(out_dir)
    hparams = dict(hparams or {})
    is_sft = method == "sft"
    loss_kwargs = {} if is_sft else get_method(method).loss_kwargs(hparams)
    needs_reference = not is_sft and get_method(method).needs_reference
    # What the reference log-probs must have been computed with: QLoRA's base is its NF4 weights.
    weights = optim.model_dtype + ("-nf4" if optim.lora and optim.lora.quantize == "4bit" else "")
    if reference_logps is not None and needs_reference:
        _check_reference(reference_logps, pairs, optim, weights)
    if optim.batch_size % optim.micro_batch_size:
        raise ValueError(f"batch_size {optim.batch_size} is not a multiple of micro_batch_size {optim.micro_batch_size}")
    lora.check_lora(optim.lora, optim.fsdp is not None)
    trackers.check_trackers(optim.report_to)

    set_seed(optim.seed)
    # accelerate keeps its settings in a process-wide singleton; one process may train runs with different
    # precisions (a notebook, the tests), so start each run from a clean state (the process group stays).
    AcceleratorState._reset_state()
    # cpu=True is also what makes accelerate join a torchrun process group over gloo on a machine without GPUs.
    accelerator = Accelerator(mixed_precision=optim.mixed_precision,
                              cpu=device == "cpu" or (device is None and not torch.cuda.is_available()),
                              log_with=trackers.make_trackers(optim.report_to, out_dir) or None)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    if world != int(os.environ.get("WORLD_SIZE", "1")):  # every process would train alone and write the same files
        raise RuntimeError(f"launched as {os.environ['WORLD_SIZE']} processes but accelerate sees {world} "
                           f"(device={device!r}); run every process on the same kind of device")
    sharded = optim.fsdp is not None and world > 1  # FSDP over one process would be plain training
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    # Sharded runs load on CPU and let fully_shard move one unit at a time to the device.
    model, tokenizer = load_policy(model_spec, dtype=optim.model_dtype, device="cpu" if sharded else accelerator.device,
                                   quantize=optim.lora.quantize if optim.lora else "no")
    model.config.use_cache = False
    if needs_reference and reference_logps is None:
        # The loaded policy is the reference at step 0: no second copy (sharded runs load one on the main
        # process, on its device). The main process computes and caches; the others then read the cache.
        with accelerator.main_process_first():
            reference_logps = get_reference_logps(model_spec, pairs, device=accelerator.device,
                                                  progress=progress and main, mixed_precision=optim.mixed_precision,
                                                  packing=optim.packing, model_dtype=weights,
                                                  model=None if sharded else model)
        _check_reference(reference_logps, pairs, optim, weights)
    tied = distributed.tied_duplicates(model)
    policy = lora.add_adapters(model, optim.lora, model_spec, optim.activation_checkpointing) if optim.lora else model
    if optim.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # The log-prob pass as one module: DDP / FSDP wrap all of it (see ResponseLogps). It packs where the model
    # can take packed rows (else logs why not); `packing` is the row layout to build batches with, or None.
    scorer = ResponseLogps(model, packing=optim.packing)
    packing = scorer.packing
    if sharded:
        scorer = distributed.shard(scorer, optim.fsdp, accelerator.device)
    trainable = [p for p in scorer.parameters() if p.requires_grad]
    # The fused AdamW kernel runs on CPU and GPU alike and is several times faster than the per-tensor loop.
    optimizer = torch.optim.AdamW(trainable, lr=optim.learning_rate, weight_decay=optim.weight_decay, fused=True)

    order = training_order(len(pairs), optim.epochs, optim.seed)
    steps_in_data = math.ceil(len(order) / optim.batch_size)
    total_steps = min(steps_in_data, optim.max_steps) if optim.max_steps else steps_in_data
    # Not prepared: accelerate's scheduler wrapper steps once per process, for loops whose every process
    # has its own batches; here a step is global, so the schedule steps once per optimizer step.
    scheduler = _schedule(optimizer, optim, total_steps)
    if sharded:
        optimizer = accelerator.prepare(optimizer)
    else:
        scorer, optimizer = accelerator.prepare(scorer, optimizer)

    config = {"method": method, "hparams": hparams, "loss_kwargs": _jsonable(loss_kwargs), "model": model_spec,
              "optim": optim.model_dump(), "data_fingerprint": pairs.fingerprint, "pairs": len(pairs),
              "reference_fingerprint": reference_logps.reference_fingerprint if needs_reference else None,
              "total_steps": total_steps, "world_size": world, "torch_threads": torch.get_num_threads(),
              "parallel": "fsdp" if sharded else ("ddp" if world > 1 else "none"), "status": "running"}
    log_path = out_dir / "train_log.jsonl"
    if main:
        write_atomic_json(config, out_dir / "config.json")
        log_path.unlink(missing_ok=True)
    trackers.start(accelerator, config)

    def loss_of(index: list[int]):
        if is_sft:
            return _sft_objective(scorer, pairs, index, tokenizer.pad_token_id, accelerator.device, packing)
        return _preference_objective(scorer, pairs, index, tokenizer.pad_token_id, accelerator.device, method,
                                     hparams, reference_logps, packing)

    scorer.train()
    started, tokens_seen, final_loss, error = time.perf_counter(), 0, float("nan"), None
    steps_done = 0
    log_file = open(log_path, "a") if main else contextlib.nullcontext()  # closed by the with below
    with progress_bar(progress and main) as bar, log_file:
        task = bar.add_task(f"{method} training", total=total_steps, info="")
        for step in range(total_steps):
            step_pairs = order[step * optim.batch_size : (step + 1) * optim.batch_size]
            # The step's loss is a mean over its pairs (SFT: over its response tokens), whichever process has them.
            denominator = sum(len(pairs.chosen_ids[i]) for i in step_pairs) if is_sft else len(step_pairs)
            micro_batches = distributed.rank_micro_batches(step_pairs, rank, world, optim.micro_batch_size)
            objective_sum, tokens, metric_sums, step_start = 0.0, 0, {}, time.perf_counter()
            for k, index in enumerate(micro_batches):
                # Gradients are all-reduced on the step's last micro-batch only (FSDP always reduce-scatters).
                sync = k == len(micro_batches) - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(scorer):
                    with accelerator.autocast():
                        objective, metrics, batch_tokens = loss_of(index or step_pairs[:1])  # [] → dummy pass
                    finite = bool(torch.isfinite(objective))
                    if distributed.any_process(accelerator, not finite):  # every process stops together
                        value = f"{objective.item()}" if not finite else "on another process"
                        error = (f"non-finite loss ({value}) at step {step + 1} of {method} with {hparams}: "
                                 "training diverged; lower the learning rate or beta")
                        break
                    accelerator.backward(objective * (world / denominator if index else 0.0))
                if index:
                    objective_sum += objective.item()
                    tokens += batch_tokens
                for name, value in metrics.items():  # a dummy pass adds 0 but the names, so every rank sums alike
                    metric_sums[name] = metric_sums.get(name, 0.0) + (value if index else 0.0)
            if error:
                break
            grad_norm = accelerator.clip_grad_norm_(trainable, optim.max_grad_norm)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: DTensor
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            names = sorted(metric_sums)
            totals = distributed.all_sum(accelerator, [objective_sum, tokens, *(metric_sums[n] for n in names)])
            step_loss, step_tokens = totals[0] / denominator, int(totals[1])
            steps_done, final_loss = step + 1, step_loss
            elapsed = time.perf_counter() - step_start
            tokens_seen += step_tokens
            record = {"step": step + 1, "loss": step_loss,
                      **{name: value / len(step_pairs) for name, value in zip(names, totals[2:])},
                      "grad_norm": float(grad_norm), "learning_rate": scheduler.get_last_lr()[0],
                      "tokens": step_tokens, "rank_tokens": tokens,
                      "tokens_per_second": step_tokens / max(elapsed, 1e-9), "seconds": elapsed}
            if main and ((step + 1) % optim.log_every == 0 or step + 1 == total_steps):
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step + 1)
            bar.update(task, advance=1, info=f"loss {step_loss:.4f}  {record['tokens_per_second']:.0f} tok/s")

    seconds = time.perf_counter() - started
    checkpoint_dir = out_dir / "checkpoint"
    status = "failed" if error else "done"
    if not error:
        state = distributed.full_state_dict(scorer) if sharded else None  # a collective: every process
        if main:
            _save_checkpoint(policy if optim.lora else accelerator.unwrap_model(scorer).model, tokenizer,
                             checkpoint_dir, optim, state, tied)
    accelerator.wait_for_everyone()
    config.update(status=status, error=error, steps=steps_done, final_loss=final_loss, seconds=seconds,
                  tokens_per_second=tokens_seen / max(seconds, 1e-9))
    if main:
        write_atomic_json(config, out_dir / "config.json")
    trackers.finish(accelerator)
    if error:
        log.error(error)
    return TrainResult(checkpoint_dir, status, error, steps_done, final_loss, seconds, tokens_seen / max(seconds, 1e-9))


def _check_reference(reference_logps: ReferenceLogps, pairs: TokenizedPairs, optim: OptimConfig, weights: str) -> None:
    """Reference log-probs must be of these pairs, under this precision (else step-0 margins are not 0)."""
    if reference_logps.data_fingerprint != pairs.fingerprint or len(reference_logps.chosen) != len(pairs):
        raise ValueError("reference log-probs were computed for other data "
                         f"({reference_logps.data_fingerprint} != {pairs.fingerprint})")
    if reference_logps.mixed_precision != optim.mixed_precision:
        raise ValueError(f"reference log-probs were computed with mixed_precision={reference_logps.mixed_precision!r} "
                         f"but training uses {optim.mixed_precision!r}: the margins would start off zero")
    if reference_logps.model_dtype != weights:
        log.warning("reference log-probs were computed with %s weights but the policy has %s weights: step-0 "
                    "margins carry that rounding", reference_logps.model_dtype, weights)


def _sft_objective(scorer, pairs, index, pad_id, device, packing=None):
    """Summed NLL of the chosen responses' tokens (prompt excluded); the loop divides by the step's tokens,
    so the step's loss is the mean NLL per response token however its examples are grouped."""
    sums, counts = chosen_logps(scorer, pairs, index, pad_id, device, packing)
    tokens = int(sum(len(pairs.prompt_ids[i]) + len(pairs.chosen_ids[i]) for i in index))
    return -sums.sum(), {"chosen_logps": (sums / counts.clamp(min=1)).sum().item()}, tokens


def _preference_objective(scorer, pairs, index, pad_id, device, method, hparams, reference_logps, packing=None):
    """Summed per-pair losses of the pairs at ``index`` and summed per-pair metrics (the loop divides by
    the step's pair count). ``tokens``: the pairs' non-padding tokens as TRL counts them (the prompt once per
    side), whatever the layout computes, so tokens/s compares layouts and trainers on the same basis."""
    wanted = get_method(method).inputs  # extra per-pair inputs (LD-DPO's tails, WPO's log Σπ²)
    tails, log_sum_sq = bool(set(wanted) & set(TAIL_INPUTS)), bool(set(wanted) & set(LOG_SUM_SQ_INPUTS))
    sums, counts, *rest = pair_logps(scorer, pairs, index, pad_id, device, packing, tails=tails, log_sum_sq=log_sum_sq)
    extras = rest[0] if rest else {}
    n = len(index)
    inputs = {}
    if reference_logps is not None:
        inputs = {"reference_chosen_logps": reference_logps.chosen[index].to(device),
                  "reference_rejected_logps": reference_logps.rejected[index].to(device)}
    if tails:
        inputs.update(policy_chosen_tail_logps=extras["tail"][:n], policy_rejected_tail_logps=extras["tail"][n:])
        if reference_logps is not None:
            inputs.update(reference_chosen_tail_logps=reference_logps.chosen_tail[index].to(device),
                          reference_rejected_tail_logps=reference_logps.rejected_tail[index].to(device))
    if log_sum_sq:
        inputs.update(policy_chosen_log_sum_sq_probs=extras["log_sum_sq"][:n],
                      policy_rejected_log_sum_sq_probs=extras["log_sum_sq"][n:])
    output = compute_loss(method, hparams=hparams, policy_chosen_logps=sums[:n], policy_rejected_logps=sums[n:],
                          chosen_lengths=counts[:n].float(), rejected_lengths=counts[n:].float(), **inputs)
    margins = (output.chosen_rewards - output.rejected_rewards).detach()
    metrics = {"reward_accuracy": (margins > 0).float().sum().item(), "reward_margin": margins.sum().item(),
               "chosen_reward": output.chosen_rewards.sum().item(), "rejected_reward": output.rejected_rewards.sum().item(),
               "chosen_logps": sums[:n].sum().item(), "rejected_logps": sums[n:].sum().item()}
    tokens = int(sum(2 * len(pairs.prompt_ids[i]) + len(pairs.chosen_ids[i]) + len(pairs.rejected_ids[i]) for i in index))
    return output.losses.sum(), metrics, tokens


def _save_checkpoint(model, tokenizer, checkpoint_dir: Path, optim: OptimConfig, state: dict | None = None,
                     tied: frozenset = frozenset()) -> None:
    """save_pretrained into a temporary folder, then rename: a killed run never leaves half a checkpoint.

    ``model``: the causal LM, or the peft model of a LoRA run (adapter, or merged with ``lora.merge``);
    ``state``: the full weights gathered from FSDP shards (written through the sharded model's config)."""
    model.config.use_cache = True

    def write(folder: Path) -> None:
        if optim.lora:
            lora.save_lora(model, tokenizer, folder, optim.lora.merge)
            return
        if state is not None:
            model.save_pretrained(folder, state_dict={k: v for k, v in state.items() if k not in tied})
        else:
            model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    write_atomic_folder(checkpoint_dir, write)


def _jsonable(values: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in values.items()}


def train_sft(model_spec: str, pairs: TokenizedPairs, optim: OptimConfig, out_dir: Path, progress: bool = True,
              device: str | None = None) -> TrainResult:
    """Supervised fine-tuning on the chosen responses (loss on response tokens only)."""
    return train(model_spec, pairs, out_dir, optim, method="sft", progress=progress, device=device)


def train_preference(model_spec: str, pairs: TokenizedPairs, method: str, hparams: dict, optim: OptimConfig,
                     out_dir: Path, reference_logps: ReferenceLogps | None = None, progress: bool = True,
                     device: str | None = None) -> TrainResult:
    """Preference optimisation with a registry method, starting from (and referenced to) ``model_spec``."""
    return train(model_spec, pairs, out_dir, optim, method=method, hparams=hparams,
                 reference_logps=reference_logps, progress=progress, device=device)



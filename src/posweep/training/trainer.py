"""The training loop: SFT and preference optimisation, one run from a model spec to a checkpoint.

In: a model spec to start from, ``TokenizedPairs``, a method name + hyperparameters (``posweep.losses``)
and an ``OptimConfig``. Out: ``out_dir/checkpoint/`` (``save_pretrained`` model + tokenizer),
``out_dir/config.json`` (what was run, how it ended) and ``out_dir/train_log.jsonl`` (one line per step:
loss, reward accuracy and margin, chosen/rejected log-probs, grad norm, learning rate, tokens/s).

The loop is plain PyTorch on ``accelerate`` (mixed precision, gradient accumulation, DDP/FSDP through
``accelerate launch``): for each optimizer step, micro-batches of pairs are packed as one batch of
``[chosen rows; rejected rows]``, one forward pass gives both sides' summed response log-probs, the loss
comes from the registry, gradients accumulate, then clip, step, schedule. Reference log-probs come from
``posweep.training.reference`` (computed once per sweep, never a second model in memory).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from posweep.config import OptimConfig
from posweep.data import TokenizedPairs
from posweep.io import write_atomic_folder, write_atomic_json
from posweep.losses import get_method
from posweep.losses.functions import compute_loss
from posweep.models import load_policy
from posweep.progress import progress_bar
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


@dataclass
class _StepStats:
    """Sums over the micro-batches of one optimizer step, for the log line."""

    loss: float = 0.0
    tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float, weight: float) -> None:
        self.metrics[name] = self.metrics.get(name, 0.0) + value * weight


def _schedule(optimizer, optim: OptimConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[optim.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=int(optim.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def _order(n: int, epochs: float, seed: int) -> list[int]:
    """Pair indices in training order: one seeded shuffle per epoch; a fractional epoch takes a prefix."""
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
    out_dir.mkdir(parents=True, exist_ok=True)
    hparams = dict(hparams or {})
    is_sft = method == "sft"
    loss_kwargs = {} if is_sft else get_method(method).loss_kwargs(hparams)
    needs_reference = not is_sft and get_method(method).needs_reference
    if needs_reference:
        if reference_logps is None:
            reference_logps = get_reference_logps(model_spec, pairs, device=device, progress=progress,
                                                  mixed_precision=optim.mixed_precision, packing=optim.packing)
        if reference_logps.data_fingerprint != pairs.fingerprint or len(reference_logps.chosen) != len(pairs):
            raise ValueError("reference log-probs were computed for other data "
                             f"({reference_logps.data_fingerprint} != {pairs.fingerprint})")
        if reference_logps.mixed_precision != optim.mixed_precision:
            raise ValueError(f"reference log-probs were computed with mixed_precision={reference_logps.mixed_precision!r} "
                             f"but training uses {optim.mixed_precision!r}: the margins would start off zero")
    if optim.batch_size % optim.micro_batch_size:
        raise ValueError(f"batch_size {optim.batch_size} is not a multiple of micro_batch_size {optim.micro_batch_size}")

    set_seed(optim.seed)
    # accelerate keeps its settings in a process-wide singleton; one process may train runs with different
    # precisions (a notebook, the tests), so start each run from a clean state (the process group stays).
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=optim.mixed_precision, cpu=device == "cpu")
    model, tokenizer = load_policy(model_spec, dtype="float32", device=accelerator.device)
    model.config.use_cache = False
    # The fused AdamW kernel runs on CPU and GPU alike and is several times faster than the per-tensor loop.
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.learning_rate, weight_decay=optim.weight_decay, fused=True)

    order = _order(len(pairs), optim.epochs, optim.seed)
    steps_in_data = math.ceil(len(order) / optim.batch_size)
    total_steps = min(steps_in_data, optim.max_steps) if optim.max_steps else steps_in_data
    scheduler = _schedule(optimizer, optim, total_steps)
    # The log-prob pass as one module: accelerate wraps all of it (see ResponseLogps). It packs where the model
    # can take packed rows (else logs why not); `packing` is the row layout to build batches with, or None.
    module = ResponseLogps(model, packing=optim.packing)
    packing = module.packing
    scorer, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    # Each process takes its share of every step's pairs (DDP); one process takes them all.
    rank, world = accelerator.process_index, accelerator.num_processes

    config = {"method": method, "hparams": hparams, "loss_kwargs": _jsonable(loss_kwargs), "model": model_spec,
              "optim": optim.model_dump(), "data_fingerprint": pairs.fingerprint, "pairs": len(pairs),
              "reference_fingerprint": reference_logps.reference_fingerprint if needs_reference else None,
              "total_steps": total_steps, "status": "running"}
    write_atomic_json(config, out_dir / "config.json")
    log_path = out_dir / "train_log.jsonl"
    log_path.unlink(missing_ok=True)

    scorer.train()
    started, tokens_seen, final_loss, error = time.perf_counter(), 0, float("nan"), None
    steps_done = 0
    with progress_bar(progress and accelerator.is_main_process) as bar, open(log_path, "a") as log_file:
        task = bar.add_task(f"{method} training", total=total_steps, info="")
        for step in range(total_steps):
            step_pairs = order[step * optim.batch_size : (step + 1) * optim.batch_size][rank::world]
            micro_batches = [step_pairs[i : i + optim.micro_batch_size] for i in range(0, len(step_pairs), optim.micro_batch_size)]
            stats, step_start = _StepStats(), time.perf_counter()
            for index in micro_batches:
                weight = len(index) / len(step_pairs)
                with accelerator.autocast():
                    if is_sft:
                        loss, step_metrics, tokens = _sft_loss(scorer, pairs, index, tokenizer.pad_token_id, accelerator.device,
                                                               packing)
                    else:
                        loss, step_metrics, tokens = _preference_loss(scorer, pairs, index, tokenizer.pad_token_id,
                                                                      accelerator.device, method, hparams, reference_logps,
                                                                      packing)
                if not torch.isfinite(loss):
                    error = (f"non-finite loss ({loss.item()}) at step {step + 1} of {method} with {hparams}: "
                             "training diverged; lower the learning rate or beta")
                    break
                accelerator.backward(loss * weight)
                stats.loss += loss.item() * weight
                stats.tokens += tokens
                for name, value in step_metrics.items():
                    stats.add(name, value, weight)
            if error:
                break
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            steps_done, final_loss = step + 1, stats.loss
            elapsed = time.perf_counter() - step_start
            tokens_seen += stats.tokens
            record = {"step": step + 1, "loss": stats.loss, **stats.metrics, "grad_norm": float(grad_norm),
                      "learning_rate": scheduler.get_last_lr()[0], "tokens": stats.tokens,
                      "tokens_per_second": stats.tokens / max(elapsed, 1e-9), "seconds": elapsed}
            if accelerator.is_main_process and ((step + 1) % optim.log_every == 0 or step + 1 == total_steps):
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            bar.update(task, advance=1, info=f"loss {stats.loss:.4f}  {record['tokens_per_second']:.0f} tok/s")

    seconds = time.perf_counter() - started
    checkpoint_dir = out_dir / "checkpoint"
    status = "failed" if error else "done"
    if not error and accelerator.is_main_process:
        _save_checkpoint(accelerator.unwrap_model(scorer).model, tokenizer, checkpoint_dir)
    accelerator.wait_for_everyone()
    config.update(status=status, error=error, steps=steps_done, final_loss=final_loss, seconds=seconds,
                  tokens_per_second=tokens_seen / max(seconds, 1e-9))
    if accelerator.is_main_process:
        write_atomic_json(config, out_dir / "config.json")
    if error:
        log.error(error)
    return TrainResult(checkpoint_dir, status, error, steps_done, final_loss, seconds, tokens_seen / max(seconds, 1e-9))


def _sft_loss(scorer, pairs, index, pad_id, device, packing=None):
    """Mean negative log-likelihood per response token of the chosen responses (prompt tokens excluded)."""
    sums, counts = chosen_logps(scorer, pairs, index, pad_id, device, packing)
    loss = -sums.sum() / counts.sum().clamp(min=1)
    tokens = int(sum(len(pairs.prompt_ids[i]) + len(pairs.chosen_ids[i]) for i in index))
    return loss, {"chosen_logps": (sums / counts.clamp(min=1)).mean().item()}, tokens


def _preference_loss(scorer, pairs, index, pad_id, device, method, hparams, reference_logps, packing=None):
    # tokens: the pairs' non-padding tokens as TRL counts them (the prompt once per side), whatever the layout
    # computes, so that tokens/s compares layouts and trainers on the same pairs/s basis.
    sums, counts = pair_logps(scorer, pairs, index, pad_id, device, packing)
    n = len(index)
    reference = {}
    if reference_logps is not None:
        reference = {"reference_chosen_logps": reference_logps.chosen[index].to(device),
                     "reference_rejected_logps": reference_logps.rejected[index].to(device)}
    output = compute_loss(method, hparams=hparams, policy_chosen_logps=sums[:n], policy_rejected_logps=sums[n:],
                          chosen_lengths=counts[:n].float(), rejected_lengths=counts[n:].float(), **reference)
    loss = output.losses.mean()
    margins = (output.chosen_rewards - output.rejected_rewards).detach()
    metrics = {"reward_accuracy": (margins > 0).float().mean().item(), "reward_margin": margins.mean().item(),
               "chosen_reward": output.chosen_rewards.mean().item(), "rejected_reward": output.rejected_rewards.mean().item(),
               "chosen_logps": sums[:n].mean().item(), "rejected_logps": sums[n:].mean().item()}
    tokens = int(sum(2 * len(pairs.prompt_ids[i]) + len(pairs.chosen_ids[i]) + len(pairs.rejected_ids[i]) for i in index))
    return loss, metrics, tokens


def _save_checkpoint(model, tokenizer, checkpoint_dir: Path) -> None:
    """save_pretrained into a temporary folder, then rename: a killed run never leaves half a checkpoint."""
    model.config.use_cache = True

    def write(folder: Path) -> None:
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



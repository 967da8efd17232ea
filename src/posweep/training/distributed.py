"""How one optimizer step is split over the processes of a run, and the few collectives the loop needs.

In: the pair indices of one optimizer step, this process's rank and the world size (``torchrun`` /
``accelerate launch``; one process is world size 1). Out: this process's micro-batches, sums over every
process, a shared "did any process see a non-finite loss", and FSDP2 sharding and its full state dict.

The layout (DDP): rank r takes pairs ``r, r + world, r + 2·world, ...`` of each step. Every process runs
the same number of micro-batches, ``ceil(ceil(n_step / world) / micro_batch_size)``, because each one
ends in collectives (DDP's gradient all-reduce, FSDP's gathers); a process whose share ran out runs a
*dummy* micro-batch (a real pair, its loss multiplied by 0) so that it still joins them.

Why the loss is scaled by ``world / n_step``: the step's loss is the mean over all its pairs,
``L = (1/n_step)·Σ_i l_i``. DDP (and FSDP's reduce-scatter) *average* gradients over processes, so
process r back-propagates ``world · (1/n_step) · Σ_{i∈r} l_i``; the average over processes is then ∇L
exactly, however unevenly the pairs fall, and one process or two give the same step.
"""

from __future__ import annotations

import math

import torch


def rank_micro_batches(step_pairs: list[int], rank: int, world: int, micro_batch_size: int) -> list[list[int]]:
    """This process's micro-batches of one step (an empty list is a dummy pass); the same count on every rank."""
    mine = step_pairs[rank::world]
    count = max(1, math.ceil(math.ceil(len(step_pairs) / world) / micro_batch_size))
    return [mine[i * micro_batch_size : (i + 1) * micro_batch_size] for i in range(count)]


def all_sum(accelerator, values: list[float]) -> list[float]:
    """``values`` summed over every process (one all-reduce of a small float64 vector)."""
    if accelerator.num_processes == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(tensor, reduction="sum").tolist()


def any_process(accelerator, flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (all processes must call it together)."""
    return all_sum(accelerator, [float(flag)])[0] > 0


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (its ``_no_split_modules`` classes): FSDP's units."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise TypeError(f"{type(model).__name__}: no decoder layers found to shard (_no_split_modules={names})")
    return layers


def shard(scorer: torch.nn.Module, options, device: torch.device) -> torch.nn.Module:
    """FSDP2 (``fully_shard``): each decoder layer is one unit, ``scorer`` (the ``ResponseLogps`` module the
    loop calls) the root, so the root's hooks gather the embeddings and LM head around the whole log-prob
    pass. Parameters become DTensor shards on this process's device (or in CPU memory with
    ``cpu_offload``); ``fully_shard`` moves one unit at a time, so the model is loaded on CPU first and no
    device ever holds all of it."""
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    kwargs = {"reshard_after_forward": options.reshard_after_forward}
    if options.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    for layer in decoder_layers(scorer.model):
        fully_shard(layer, **kwargs)
    fully_shard(scorer, **kwargs)
    return scorer


def full_state_dict(scorer: torch.nn.Module, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The whole model's weights gathered from the shards, on CPU, on the main process ({} elsewhere).

    A collective: every process calls it. Keys lose ``prefix`` (the ``ResponseLogps`` attribute), so they
    are the causal LM's own and ``save_pretrained(state_dict=...)`` writes an ordinary folder."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(scorer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {key.removeprefix(prefix): value for key, value in state.items()}


def tied_duplicates(model: torch.nn.Module) -> set[str]:
    """Parameter names that alias an earlier one (a tied LM head): left out of a gathered state dict."""
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return every - {name for name, _ in model.named_parameters()}

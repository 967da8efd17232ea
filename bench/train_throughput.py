"""Training throughput: posweep's trainer against TRL 1.16's DPOTrainer and CPOTrainer(simpo), in one run.

In: a model (by default a random Llama built here), synthetic preference pairs (same pairs for everyone) and the
optimisation settings below. Out: a table on stdout and a JSON file (``--out``) with, per implementation and
configuration, steady-state tokens/s, peak memory, the one-time setup time and the ratio against TRL's best
configuration for the same method, plus the machine it ran on.

What runs, each from a freshly loaded copy of the same weights, with the same pairs, learning rate, pairs per step,
micro-batch (gradient accumulation), number of steps, optimizer (fused AdamW, float32 master weights) and precision
(bf16 autocast on GPU, float32 on CPU):
- posweep dpo: ``get_reference_logps`` once (the reference pass, timed apart, as in a sweep where every run reads
  the shared cache; each configuration computes its own), then ``train_preference``;
- posweep simpo: ``train_preference``;
- each of them twice: ``packing=True`` (each micro-batch's pairs end to end in rows without padding, each prompt
  computed once, ``posweep.training.packing``) and ``packing=False`` (right-padded ``[chosen rows; rejected rows]``,
  what posweep did before packing);
- TRL DPOTrainer, ``loss_type sigmoid``, with ``precompute_ref_log_probs`` False (reference forward every step) and
  True (reference pass inside the trainer's construction, timed apart);
- TRL CPOTrainer, ``loss_type simpo``, ``cpo_alpha 0``.
TRL's activation checkpointing (its default) is off, as posweep has none; ``--trl-gradient-checkpointing`` turns it on.

Throughput counts non-padding tokens as TRL does (prompt + response of both sides of every pair, so each prompt
twice), for every implementation and layout alike, over the steady steps only, after ``--warmup-steps``: sum(tokens) /
sum(seconds). On the same pairs a ratio of tokens/s is therefore a ratio of pairs/s, whatever each layout computes;
the "layout" line says how many token positions each layout computes per pair (padded rows: rows x width; packed
rows: each prompt once, padding only at row ends). On GPU the table adds the share of the chip's bf16 peak: tokens/s
x (6 x parameters + 6 x layers x hidden x sequence length, causal attention) / peak, on that same token count, so the
share is of TRL-equivalent work, not of the FLOPs a layout happens to compute; the peak comes from the GPU's name
(``--peak-tflops`` overrides). The table also gives the median over steps of each step's
tokens/s, which a burst of load from other processes during one step does not move. ``--repeats N`` runs every
configuration N times, interleaved, and keeps each one's fastest run. posweep's come from its ``train_log.jsonl``; TRL's from a
wrapped ``training_step`` (tokens: the attention masks of its batches) and a callback that times each step from the
end of the previous one (so batch collation and logging count, as they do in posweep's step time), with
``torch.cuda.synchronize`` on GPU. Peak memory: on GPU ``torch.cuda.max_memory_allocated`` (reset before each
configuration, so it includes model loading, reference passes and training); on CPU the peak resident set size above
the one at the start of the configuration (``VmHWM`` of /proc/self/status, reset through /proc/self/clear_refs, after
``malloc_trim`` hands the previous configuration's freed heap back, so that reusing it does not hide memory).

Pairs: prompts of 40-120 words and responses of 60-240 words (DESIGN.md section 7), random words from a fixed list,
seeded; ``--scale`` multiplies the word counts (default 0.15 on CPU so the run takes minutes, 1 on GPU). posweep gets
``{prompt, chosen, rejected}`` rows and renders the prompt with the chat template; TRL gets the same rows with the
prompt already rendered by the same template (CPOTrainer takes plain strings only). Both shuffle with
``torch.randperm`` seeded 0, so every run trains on the same token sequences in the same steps (the "batches" line
checks the per-step token counts).

    # CPU, CI-sized: 4-layer random Llama (hidden 128) with the SmolLM2 tokenizer, a few minutes on 2 cores
    POSWEEP_CACHE=/tmp/exp/cache .venv/bin/python bench/train_throughput.py --device cpu
    # CPU shared with other work: one thread (two threads on two busy cores stall each other: runs 2-10x slower
    # and erratic), best of 3 interleaved repeats
    .venv/bin/python bench/train_throughput.py --device cpu --threads 1 --repeats 3
    # GPU: 1.7B Llama-shaped random model, bf16 autocast, 8 pairs per step
    .venv/bin/python bench/train_throughput.py --device cuda
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, PrinterCallback, TrainerCallback

from posweep.config import DEFAULT_MODEL, DataLimits, OptimConfig
from posweep.data import pairs_from_rows, prepare_pairs
from posweep.models import load_tokenizer, resolve_model_path
from posweep.training import get_reference_logps, train_preference, training_order

DPO_BETA = 0.1
SIMPO_BETA, SIMPO_GAMMA_BETA_RATIO = 2.5, 0.5
LEARNING_RATE = 1e-6
# Long enough that no implementation truncates anything at --scale 1 (rows reach ~430 tokens).
MAX_LENGTH, MAX_PROMPT_LENGTH = 1024, 512

# Plain common words: about 1.1 SmolLM2 tokens per word.
_WORD_TEXT = """
the of and to in is that for it as was with be by on not he this are or his from at which but have an they
you were her she there would their we him been has when who will more no if out so said what up its about into
than them can only other new some could time these two may then do first any my now such like our over man me
even most made after also did many before must through back years where much your way well down should because
each just those people how too little state good very make world still own see men work long get here between
both life being under never day same another know while last might us great old year off come since against go
came right used take three small place water house light story answer question garden river market city school
child family friend morning evening letter table window paper music color animal forest mountain ocean island
road bridge train kitchen bread coffee dinner doctor teacher student history science reason problem idea example
simple careful quick bright quiet strong gentle happy clear warm cold early late important different possible
explain describe compare suggest remember consider choose prepare improve follow build write read learn help
"""
WORDS = _WORD_TEXT.split()


# ------------------------------------------------------------------------------------------------ data


def synthetic_text(rng: random.Random, words: int, end: str = ".") -> str:
    """``words`` random words as sentences of 6-16 words."""
    sentences = []
    while words > 0:
        n = min(words, rng.randint(6, 16))
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + end)
        words -= n
    return " ".join(sentences)


def synthetic_pairs(n: int, scale: float, seed: int) -> list[dict]:
    """``n`` rows ``{pair_id, prompt, chosen, rejected}``: prompts 40-120 words, responses 60-240, times ``scale``."""
    rng = random.Random(seed)

    def words(low: int, high: int) -> int:
        return rng.randint(max(1, round(low * scale)), max(1, round(high * scale)))

    return [{"pair_id": str(i), "prompt": synthetic_text(rng, words(40, 120), end="?"),
             "chosen": synthetic_text(rng, words(60, 240)), "rejected": synthetic_text(rng, words(60, 240))}
            for i in range(n)]


def trl_rows(rows: list[dict], tokenizer) -> list[dict]:
    """TRL's standard format with the prompt rendered by the chat template, as posweep renders it."""
    return [{"prompt": tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                                     add_generation_prompt=True),
             "chosen": row["chosen"], "rejected": row["rejected"]} for row in rows]


# ----------------------------------------------------------------------------------------------- model


def build_random_model(size: str, out_dir: Path, device: str, seed: int) -> Path:
    """A random Llama with the SmolLM2 tokenizer, saved to ``out_dir``: ``tiny`` (4 layers, hidden 128, float32)
    or ``1.7b`` (SmolLM2-1.7B's shape, built in bf16 on ``device``)."""
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    shape = {"tiny": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
                      "num_attention_heads": 4, "num_key_value_heads": 4},
             "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                      "num_attention_heads": 32, "num_key_value_heads": 32}}[size]
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)
    dtype = torch.bfloat16 if size == "1.7b" else torch.float32
    torch.manual_seed(seed)
    with torch.device(device):  # initialising 1.7B parameters is much faster on the GPU
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ------------------------------------------------------------------------------------------ measuring


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory of one configuration: CUDA allocator peak on GPU, peak RSS above the start on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.kind = "cuda max_memory_allocated" if device == "cuda" else "peak RSS above start (VmHWM)"
        self.start_rss = 0

    def reset(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return
        _release_free_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS
        except OSError:
            self.kind = "process peak RSS above start (not resettable here: an upper bound)"
        self.start_rss = _status_kib("VmRSS") * 1024

    def peak_bytes(self) -> int:
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated()
        return max(0, _status_kib("VmHWM") * 1024 - self.start_rss)


def _release_free_heap() -> None:
    """Hand memory freed by the previous configuration back to the OS, so that it does not reuse it unseen."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {key} line")
    return int(match.group(1))


@dataclass
class Measurement:
    implementation: str  # "posweep" | "trl"
    method: str  # "dpo" | "simpo"
    configuration: str
    steps: list[dict]  # per optimizer step: step, tokens, seconds
    warmup_steps: int
    pairs_per_step: int
    peak_memory_bytes: int
    setup_seconds: float  # one-time work before step 1: reference pass (posweep dpo), trainer construction (TRL)
    total_seconds: float
    ratio_vs_trl_best: float | None = None
    memory_vs_trl_best: float | None = None
    ratio_vs_padded: float | None = None  # posweep: tokens/s (= pairs/s) against posweep padded, same method
    memory_vs_padded: float | None = None
    peak_share: float | None = None  # GPU: share of the chip's bf16 peak (module docstring)
    notes: dict = field(default_factory=dict)

    @property
    def steady(self) -> list[dict]:
        return [s for s in self.steps if s["step"] > self.warmup_steps]

    @property
    def tokens_per_second(self) -> float:
        seconds = sum(s["seconds"] for s in self.steady)
        return sum(s["tokens"] for s in self.steady) / seconds if seconds else float("nan")

    @property
    def median_step_tokens_per_second(self) -> float:
        """Robust to a burst of load from other processes during one step, unlike the sum ratio."""
        return statistics.median(s["tokens"] / s["seconds"] for s in self.steady)

    @property
    def tokens_per_pair(self) -> float:
        steady = self.steady
        return sum(s["tokens"] for s in steady) / max(1, len(steady) * self.pairs_per_step)


@dataclass
class Settings:
    device: str
    model_dir: str
    steps: int
    warmup_steps: int
    pairs_per_step: int
    micro_batch_size: int
    epochs: float
    trl_gradient_checkpointing: bool
    work_dir: Path


# ------------------------------------------------------------------------------------------- posweep


def run_posweep(method: str, tokenized, settings: Settings, memory: PeakMemory, packing: bool = True) -> Measurement:
    optim = OptimConfig(learning_rate=LEARNING_RATE, epochs=settings.epochs, batch_size=settings.pairs_per_step,
                        micro_batch_size=settings.micro_batch_size, max_steps=settings.steps, warmup_ratio=0.0,
                        scheduler="constant", mixed_precision="bf16" if settings.device == "cuda" else "no",
                        log_every=1, packing=packing)
    hparams = {"beta": DPO_BETA} if method == "dpo" else {"beta": SIMPO_BETA, "gamma_beta_ratio": SIMPO_GAMMA_BETA_RATIO}
    out_dir = settings.work_dir / f"posweep-{method}"
    memory.reset()
    started = time.perf_counter()
    reference, notes = None, {}
    if method == "dpo":
        reference = get_reference_logps(settings.model_dir, tokenized, batch_size=settings.micro_batch_size,
                                        device=settings.device, progress=False, packing=packing)
        notes["reference_forward_passes"] = reference.forward_passes  # 0: read from an existing cache
    synchronize(settings.device)
    setup_seconds = time.perf_counter() - started
    result = train_preference(settings.model_dir, tokenized, method, hparams, optim, out_dir,
                              reference_logps=reference, progress=False, device=settings.device)
    total_seconds = time.perf_counter() - started
    if result.status != "done":
        raise RuntimeError(f"posweep {method} failed: {result.error}")
    records = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    steps = [{"step": r["step"], "tokens": r["tokens"], "seconds": r["seconds"]} for r in records]
    layout = "packed" if packing else "padded"
    measurement = Measurement("posweep", method, f"{layout}, reference cached" if method == "dpo" else layout, steps,
                              settings.warmup_steps, settings.pairs_per_step, memory.peak_bytes(), setup_seconds,
                              total_seconds, notes=notes)
    shutil.rmtree(out_dir, ignore_errors=True)  # the checkpoint: up to 7 GB for the 1.7B model
    return measurement


# ----------------------------------------------------------------------------------------------- TRL


class StepTimer(TrainerCallback):
    """Seconds of each optimizer step, from the end of the previous one; tokens come from ``count_tokens``."""

    def __init__(self, device: str):
        self.device, self.records, self.tokens, self.last_end = device, [], 0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.last_end = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        now = time.perf_counter()
        self.records.append({"step": state.global_step, "tokens": self.tokens, "seconds": now - self.last_end})
        self.tokens, self.last_end = 0, now


def count_tokens(trainer, timer, mask_keys: tuple[str, ...]) -> None:
    """Add the non-padding tokens of every micro-batch the trainer trains on to ``timer.tokens``.

    Wrapping ``training_step`` (not the collator) attributes each batch to the right step: the dataloader fetches
    batches ahead of the step that uses them.
    """
    training_step = trainer.training_step

    def counted_training_step(model, inputs, num_items_in_batch=None):
        timer.tokens += int(sum(inputs[key].sum() for key in mask_keys))
        return training_step(model, inputs, num_items_in_batch)

    trainer.training_step = counted_training_step


def run_trl(method: str, precompute: bool, rows: list[dict], settings: Settings, memory: PeakMemory) -> Measurement:
    tokenizer = load_tokenizer(settings.model_dir)
    name = f"trl-{method}" + ("-precompute" if precompute else "")
    common = {"output_dir": str(settings.work_dir / name), "per_device_train_batch_size": settings.micro_batch_size,
              "gradient_accumulation_steps": settings.pairs_per_step // settings.micro_batch_size,
              "max_steps": settings.steps, "learning_rate": LEARNING_RATE, "lr_scheduler_type": "constant",
              "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "optim": "adamw_torch_fused",
              "bf16": settings.device == "cuda", "use_cpu": settings.device == "cpu",
              "activation_checkpointing": settings.trl_gradient_checkpointing, "logging_steps": 1,
              "save_strategy": "no", "report_to": [], "disable_tqdm": True, "dataloader_num_workers": 0, "seed": 0,
              "max_length": MAX_LENGTH}
    timer = StepTimer(settings.device)
    memory.reset()
    started = time.perf_counter()
    # float32 master weights, as posweep's trainer keeps them; bf16 comes from autocast (bf16=True) on GPU.
    model = AutoModelForCausalLM.from_pretrained(settings.model_dir, dtype=torch.float32)
    dataset = datasets.Dataset.from_list(rows)
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, loss_type=["sigmoid"], beta=DPO_BETA, precompute_ref_log_probs=precompute)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[timer])
        mask_keys = ("attention_mask",)
        configuration = f"precompute_ref_log_probs={precompute}"
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=SIMPO_BETA,
                         simpo_gamma=SIMPO_GAMMA_BETA_RATIO * SIMPO_BETA, remove_unused_columns=False)
        trainer = CPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[timer])
        mask_keys = ("chosen_attention_mask", "rejected_attention_mask")
        configuration = "CPOTrainer loss_type=simpo"
    synchronize(settings.device)
    setup_seconds = time.perf_counter() - started
    trainer.remove_callback(PrinterCallback)  # it prints every log dict when tqdm is off
    count_tokens(trainer, timer, mask_keys)
    trainer.train()
    total_seconds = time.perf_counter() - started
    measurement = Measurement("trl", method, configuration, timer.records, settings.warmup_steps,
                              settings.pairs_per_step, memory.peak_bytes(), setup_seconds, total_seconds)
    del trainer, model
    shutil.rmtree(settings.work_dir / name, ignore_errors=True)
    return measurement


# ------------------------------------------------------------------------------------------- report


def best_of_repeats(runs: list[Measurement]) -> list[Measurement]:
    """Per configuration, the repeat with the highest steady tokens/s: load from other processes only slows a run
    down, so the fastest repeat is the closest to the undisturbed figure. Every repeat's figure goes in ``notes``."""
    best: dict[tuple, Measurement] = {}
    for run in runs:
        key = (run.implementation, run.method, run.configuration)
        if key not in best or run.tokens_per_second > best[key].tokens_per_second:
            best[key] = run
    for key, run in best.items():
        run.notes["repeats_tokens_per_second"] = [round(r.tokens_per_second, 1) for r in runs
                                                  if (r.implementation, r.method, r.configuration) == key]
    return list(best.values())


def add_ratios(measurements: list[Measurement]) -> None:
    """Each row against TRL's fastest configuration for the same method, and posweep's against posweep padded."""
    for method in {m.method for m in measurements}:
        padded = [m for m in measurements if m.method == method and m.implementation == "posweep"
                  and m.configuration.startswith("padded")]
        for m in measurements:
            if padded and m.method == method and m.implementation == "posweep":
                m.ratio_vs_padded = m.tokens_per_second / padded[0].tokens_per_second
                m.memory_vs_padded = m.peak_memory_bytes / max(1, padded[0].peak_memory_bytes)
        trl = [m for m in measurements if m.method == method and m.implementation == "trl"]
        if not trl:
            continue
        best = max(trl, key=lambda m: m.tokens_per_second)
        for m in measurements:
            if m.method == method:
                m.ratio_vs_trl_best = m.tokens_per_second / best.tokens_per_second
                m.memory_vs_trl_best = m.peak_memory_bytes / max(1, best.peak_memory_bytes)


def describe_machine(device: str) -> dict:
    import trl

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "torch_threads": torch.get_num_threads(), "logical_cpus": os.cpu_count()}
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    info["cpu"] = match.group(1).strip() if match else platform.processor()
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def format_table(measurements: list[Measurement]) -> str:
    def times(value):
        return f"{value:.2f}x" if value is not None else "-"

    gpu = any(m.peak_share is not None for m in measurements)
    header = (f"{'implementation':<15}{'method':<7}{'configuration':<29}{'steady tok/s':>13}{'vs TRL best':>12}"
              f"{'vs padded':>10}{'median step':>12}{'peak mem':>11}{'mem vs best':>12}{'mem vs pad':>11}"
              f"{'tok/pair':>9}{'one-time s':>11}" + (f"{'bf16 peak':>10}" if gpu else ""))
    lines = [header, "-" * len(header)]
    for m in measurements:
        share = (f"{100 * m.peak_share:>9.1f}%" if m.peak_share is not None else f"{'-':>10}") if gpu else ""
        lines.append(f"{m.implementation:<15}{m.method:<7}{m.configuration:<29}{m.tokens_per_second:>13.0f}"
                     f"{times(m.ratio_vs_trl_best):>12}{times(m.ratio_vs_padded):>10}"
                     f"{m.median_step_tokens_per_second:>12.0f}{m.peak_memory_bytes / 2**30:>9.2f}Gi"
                     f"{times(m.memory_vs_trl_best):>12}{times(m.memory_vs_padded):>11}"
                     f"{m.tokens_per_pair:>9.1f}{m.setup_seconds:>11.1f}{share}")
    return "\n".join(lines)


# Dense bf16 peak (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name; first match wins.
BF16_PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0), ("A100", 312.0),
                    ("L40S", 362.0), ("A10G", 70.0), ("L4", 121.0)]


def bf16_peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    return next((tflops * 1e12 for key, tflops in BF16_PEAK_TFLOPS if key in device_name), None)


def layout_positions(tokenized, settings: Settings) -> dict[str, float]:
    """Token positions per pair that each layout computes over the steady steps' micro-batches: TRL's count
    (non-padding, prompt once per side), padded rows (rows x width), packed rows (rows x width, as laid out for
    a dense mask on CPU or FlexAttention on GPU), and the packed rows' real tokens (each prompt once)."""
    from posweep.training.attention import DENSE_ROW_TOKENS, FLEX_BLOCK
    from posweep.training.packing import Packing, pack_pairs

    packing = Packing(None, FLEX_BLOCK) if settings.device == "cuda" else Packing(DENSE_ROW_TOKENS)
    order = training_order(len(tokenized), settings.epochs)
    start, end = settings.warmup_steps * settings.pairs_per_step, settings.steps * settings.pairs_per_step
    totals = {"trl_count": 0, "padded_rows": 0, "packed_rows": 0, "packed_real": 0}
    for i in range(start, end, settings.micro_batch_size):
        index = order[i : i + settings.micro_batch_size]
        prompts = [tokenized.prompt_ids[j] for j in index]
        chosen, rejected = [tokenized.chosen_ids[j] for j in index], [tokenized.rejected_ids[j] for j in index]
        totals["trl_count"] += sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(prompts, chosen, rejected))
        totals["padded_rows"] += 2 * len(index) * max(len(p) + len(x) for p, x in zip(prompts + prompts, chosen + rejected))
        packed = pack_pairs(prompts, chosen, rejected, 0, packing)
        totals["packed_rows"] += packed.input_ids.numel()
        totals["packed_real"] += packed.real_tokens
    pairs = max(1, end - start)
    return {key: value / pairs for key, value in totals.items()}


def flops_per_counted_token(tokenized, settings: Settings) -> float:
    """Training FLOPs per counted (TRL-basis) token over the steady steps' pairs: 6 x parameters per token plus
    causal attention, 6 x layers x hidden x T per token of a sequence of T tokens (QK and AV, forward and
    backward), each side of a pair being one sequence prompt + response."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(settings.model_dir)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    order = training_order(len(tokenized), settings.epochs)
    index = order[settings.warmup_steps * settings.pairs_per_step : settings.steps * settings.pairs_per_step]
    lengths = [len(tokenized.prompt_ids[j]) + len(side[j]) for j in index
               for side in (tokenized.chosen_ids, tokenized.rejected_ids)]
    attention = 6 * config.num_hidden_layers * config.hidden_size * sum(t * t for t in lengths)
    return (6 * parameters * sum(lengths) + attention) / max(1, sum(lengths))


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None,
                        help="the builtin SmolLM2-135M (CPU default), random-1.7b (GPU default), random-tiny, or a "
                             "posweep model spec "
                             f"(a save_pretrained folder, {DEFAULT_MODEL})")
    parser.add_argument("--pairs", type=int, default=None, help="default: steps x pairs-per-step (one pass)")
    parser.add_argument("--pairs-per-step", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=None, help="default: pairs-per-step (no accumulation)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: 4 CPU, 20 GPU)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="excluded from tokens/s (default: 1 CPU, 5 GPU)")
    parser.add_argument("--methods", default="dpo,simpo", help="comma-separated, among dpo, simpo")
    parser.add_argument("--scale", type=float, default=None,
                        help="word-count multiplier of prompts (40-120) and responses (60-240); default 0.15 CPU, 1 GPU")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every configuration this many times, interleaved, and keep each one's fastest "
                             "(for machines shared with other work)")
    parser.add_argument("--layouts", default="packed,padded", help="posweep row layouts, among packed, padded")
    parser.add_argument("--no-trl", action="store_true", help="posweep only")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak in TFLOP/s (default: from its name, see BF16_PEAK_TFLOPS)")
    parser.add_argument("--trl-gradient-checkpointing", action="store_true", help="TRL's default; off for parity")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "posweep-bench" / "train_throughput.json")
    args = parser.parse_args(argv)
    on_gpu = args.device == "cuda"
    # On CPU the builtin 135M model, the one the tests train: random-tiny (hidden 128, vocab 49152) spends 6x
    # more on its LM head than on its backbone, so it measures the head, not the row layout (RESULTS.md).
    args.model = args.model or ("random-1.7b" if on_gpu else DEFAULT_MODEL)
    args.steps = args.steps or (20 if on_gpu else 4)
    args.warmup_steps = (5 if on_gpu else 1) if args.warmup_steps is None else args.warmup_steps
    args.scale = args.scale or (1.0 if on_gpu else 0.15)
    args.micro_batch_size = args.micro_batch_size or args.pairs_per_step
    args.pairs = args.pairs or args.steps * args.pairs_per_step
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    layouts = [m.strip() for m in args.layouts.split(",") if m.strip()]
    if not layouts or set(layouts) - {"packed", "padded"}:
        parser.error(f"--layouts: use packed and/or padded, not {args.layouts!r}")
    args.layouts = [layout == "packed" for layout in layouts]
    if set(args.methods) - {"dpo", "simpo"}:
        parser.error(f"--methods: unknown {sorted(set(args.methods) - {'dpo', 'simpo'})}; use dpo, simpo")
    if args.pairs_per_step % args.micro_batch_size:
        parser.error(f"--pairs-per-step {args.pairs_per_step} is not a multiple of --micro-batch-size "
                     f"{args.micro_batch_size}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.warmup_steps >= args.steps:
        parser.error(f"--warmup-steps {args.warmup_steps} leaves no steady step of --steps {args.steps}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["TQDM_DISABLE"] = "1"  # TRL's reference precompute bar
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    logging.getLogger("posweep").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_average_start = os.getloadavg()

    work_dir = Path(tempfile.mkdtemp(prefix="posweep-train-bench-"))
    try:
        fresh_caches = args.model.startswith("random-")
        if fresh_caches:
            model_dir = str(build_random_model(args.model.removeprefix("random-"), work_dir / "model", args.device,
                                               args.seed))
            # A cache of our own: the reference pass is really computed (and timed), and nothing is left behind.
            os.environ["POSWEEP_CACHE"] = str(work_dir / "cache")
        else:
            model_dir = resolve_model_path(args.model)  # TRL loads it with from_pretrained
        tokenizer = load_tokenizer(model_dir)
        rows = synthetic_pairs(args.pairs, args.scale, args.seed)
        limits = DataLimits(max_prompt_length=MAX_PROMPT_LENGTH, max_length=MAX_LENGTH)
        started = time.perf_counter()
        pair_list, summary = pairs_from_rows(rows, "synthetic")
        tokenized = prepare_pairs("synthetic", tokenizer, limits, pairs=pair_list, summary=summary)
        tokenize_seconds = time.perf_counter() - started
        if tokenized.summary.get("truncated"):
            print(f"warning: posweep truncated some pairs: {tokenized.summary['truncated']}", file=sys.stderr)
        settings = Settings(args.device, model_dir, args.steps, args.warmup_steps, args.pairs_per_step,
                            args.micro_batch_size, max(1.0, args.steps * args.pairs_per_step / args.pairs),
                            args.trl_gradient_checkpointing, work_dir)
        memory = PeakMemory(args.device)
        rows_for_trl = trl_rows(rows, tokenizer)

        runs = []
        for repeat in range(1, args.repeats + 1):
            for method in args.methods:
                for packing in args.layouts:
                    if fresh_caches:  # so that every repeat and layout computes the reference pass itself
                        os.environ["POSWEEP_CACHE"] = str(work_dir / f"cache-{repeat}-{packing}")
                    layout = "packed" if packing else "padded"
                    print(f"[{repeat}/{args.repeats}] posweep {method} {layout} ...", file=sys.stderr, flush=True)
                    runs.append(run_posweep(method, tokenized, settings, memory, packing))
                for precompute in ([] if args.no_trl else [False, True] if method == "dpo" else [False]):
                    print(f"[{repeat}/{args.repeats}] trl {method}{' precompute' if precompute else ''} ...",
                          file=sys.stderr, flush=True)
                    runs.append(run_trl(method, precompute, rows_for_trl, settings, memory))
        positions = layout_positions(tokenized, settings)
        flops_per_token = flops_per_counted_token(tokenized, settings) if args.device == "cuda" else None
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    measurements = best_of_repeats(runs)
    add_ratios(measurements)
    peak = bf16_peak_flops(torch.cuda.get_device_name(0), args.peak_tflops) if args.device == "cuda" else None
    if peak and flops_per_token:
        for m in measurements:
            m.peak_share = m.tokens_per_second * flops_per_token / peak

    machine = describe_machine(args.device)
    machine["load_average_start"], machine["load_average_end"] = load_average_start, os.getloadavg()
    where = (f"{machine['gpu']} ({machine['gpu_memory_gib']} GiB), CUDA {machine['cuda']}" if args.device == "cuda"
             else f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['torch_threads']} torch threads")
    print(f"machine: {where}; load average {load_average_start[0]:.1f} at start, {machine['load_average_end'][0]:.1f} "
          f"at end; torch {machine['torch']}, transformers {machine['transformers']}, trl {machine['trl']}")
    print(f"model: {args.model}; {args.pairs} pairs (scale {args.scale}), {args.pairs_per_step} pairs/step, micro-batch "
          f"{args.micro_batch_size}, {args.steps} steps of which {args.warmup_steps} warm-up; best of {args.repeats}; "
          f"{'bf16 autocast' if args.device == 'cuda' else 'float32'}; posweep tokenization {tokenize_seconds:.1f} s")
    print(f"peak memory: {memory.kind}; one-time s: reference pass (posweep dpo), trainer construction with "
          "tokenization and reference pass or copy (TRL)")
    # posweep and TRL both shuffle with torch.randperm seeded 0, so each step should see the same pairs everywhere.
    same_batches = len({tuple(s["tokens"] for s in m.steps) for m in runs}) == 1
    print(f"batches: {'the same' if same_batches else 'DIFFERENT'} non-padding token counts at every step in every run")
    print(f"layout: token positions computed per pair over the steady steps: padded rows {positions['padded_rows']:.1f}, "
          f"packed rows {positions['packed_rows']:.1f} (of which real tokens {positions['packed_real']:.1f}); "
          f"tokens counted per pair (TRL's non-padding count, every configuration) {positions['trl_count']:.1f}")
    if args.device == "cuda":
        print(f"bf16 peak: {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown for this GPU (pass --peak-tflops)'}; "
              f"{flops_per_token / 1e9:.2f} GFLOP per counted token (6 x parameters + causal attention)")
    print(format_table(measurements))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "memory_kind": memory.kind, "tokenize_seconds": tokenize_seconds, "same_batches": same_batches,
              "layout_positions_per_pair": positions, "flops_per_counted_token": flops_per_token,
              "bf16_peak_flops": peak,
              "results": [{**asdict(m), "tokens_per_second": m.tokens_per_second, "tokens_per_pair": m.tokens_per_pair,
                           "median_step_tokens_per_second": m.median_step_tokens_per_second} for m in measurements]}
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Sampling throughput: posweep's sampling backends against plain transformers ``generate``, in one run.

All sample the same prompts with the same model, batch size and sampling settings in one process, and stop
at the same tokens (the model's end-of-turn tokens, ``generation.stop_token_ids``):
- posweep ``hf``: ``generation.sample_responses`` (length-sorted batches, prompts prefilled in groups of
  similar length, stopped rows leave the batch, per-row random numbers);
- posweep ``hf-compiled``: the same loop with a static cache and a ``torch.compile``d decode step
  (``--backends hf,hf-compiled``; compile time is reported separately, from the warm-up);
- posweep ``vllm`` (``--backends vllm``, CUDA with vLLM installed; needs ``--model`` to be a local folder);
- naive ``generate``: the usual recipe, batches in input order, ``tokenizer(texts, padding=True)`` with left
  padding, ``model.generate`` with every knob explicit.
Throughput counts generated tokens up to and including each row's stop token (padding after it not
counted). The machine's load average is printed with the results: on a shared machine wall-clock numbers
move with it, tokens per CPU-second (this process only) much less.

    POSWEEP_CACHE=/tmp/exp/cache .venv/bin/python bench/sample_throughput.py --prompts 32 --batch-size 32 \
        --max-new-tokens 128 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from transformers import GenerationConfig

from posweep.config import DEFAULT_MODEL, SamplingSpec
from posweep.data import PromptItem
from posweep.generation import model_stop_token_ids, sample_responses, split_at_stop
from posweep.models import load_policy

# Varied lengths on purpose: batching by length only matters when prompts differ.
QUESTIONS = [
    "Hi!",
    "What is the capital of France?",
    "How do I bake bread at home? List the steps and the ingredients I need, and explain what each one does.",
    "Tell me a joke about cats.",
    "Explain photosynthesis to a ten year old in two or three sentences, with an everyday example.",
    "Why is the sky blue?",
    "Write a short poem about the sea at night.",
    ("I am planning a week-long trip to Japan in spring with two children aged six and nine. Which cities "
     "should we visit, how should we travel between them, and what should we book in advance?"),
    "What is 17 times 23?",
    "Give me three tips for sleeping better.",
    "Summarize the plot of Romeo and Juliet.",
    ("How can I stop procrastinating when I have a big project due and I keep getting distracted by my phone, "
     "email and social media? I have tried to-do lists already."),
    "What does a CPU do?",
    "Translate 'good morning' into Spanish and German.",
    "Is it safe to eat raw cookie dough?",
    "Recommend a book for someone who liked The Hobbit.",
]


def make_prompts(n: int) -> list[PromptItem]:
    return [PromptItem(str(i), [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]) for i in range(n)]


def generated_tokens(rows: list[list[int]], stop_ids: list[int]) -> int:
    total = 0
    for row in rows:
        tokens, stop = split_at_stop(row, stop_ids)
        total += len(tokens) + (stop is not None)
    return total


def posweep_runner(backend: str):
    def run(model, tokenizer, prompts: list[PromptItem], spec: SamplingSpec) -> int:
        samples = sample_responses(model, tokenizer, prompts, spec, progress=False, backend=backend)
        return sum(s.length + (s.stop_token_id is not None) for s in samples)
    return run


def generation_config(spec: SamplingSpec, stop_ids: list[int], pad_id: int) -> GenerationConfig:
    """The sampler's settings for ``generate``, every knob explicit (transformers defaults to top_k=50)."""
    common = {"max_new_tokens": spec.max_new_tokens, "eos_token_id": stop_ids, "pad_token_id": pad_id}
    if spec.temperature == 0:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(do_sample=True, temperature=spec.temperature, top_p=spec.top_p, top_k=0, **common)


def run_naive(model, tokenizer, prompts: list[PromptItem], spec: SamplingSpec) -> int:
    texts = [tokenizer.apply_chat_template(p.prompt, tokenize=False, add_generation_prompt=True) for p in prompts]
    stop_ids = model_stop_token_ids(model, tokenizer)
    config = generation_config(spec, stop_ids, tokenizer.pad_token_id)  # same sampling settings, same stops
    torch.manual_seed(spec.seed)
    tokens = 0
    for start in range(0, len(texts), spec.batch_size):
        batch = tokenizer(texts[start : start + spec.batch_size], padding=True, padding_side="left",
                          add_special_tokens=False, return_tensors="pt").to(model.device)
        with torch.no_grad():
            output = model.generate(**batch, generation_config=config)
        tokens += generated_tokens(output[:, batch["input_ids"].shape[1] :].tolist(), stop_ids)
    return tokens


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--backends", default="hf", help="posweep backends to time, comma-separated: "
                                                         "hf, hf-compiled, vllm")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs of each; the median counts")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_policy(args.model, dtype=args.dtype, device=args.device)
    prompts = make_prompts(args.prompts)
    spec = SamplingSpec(max_new_tokens=args.max_new_tokens, temperature=args.temperature, batch_size=args.batch_size)
    runners = {f"posweep {b}": posweep_runner(b) for b in args.backends.split(",")}
    runners["naive generate"] = run_naive
    print(f"model {args.model} on {model.device} ({model.dtype}), {len(prompts)} prompts, batch {args.batch_size}, "
          f"max_new_tokens {args.max_new_tokens}, temperature {args.temperature}, "
          f"{torch.get_num_threads()} threads; {load()}")
    # Warm-up on the full spec: one-time costs (allocations, torch.compile for hf-compiled) stay out of the timings.
    for name, run in runners.items():
        started = time.perf_counter()
        run(model, tokenizer, prompts[: args.batch_size], spec)
        print(f"{name:>20} warm-up (incl. one-time costs such as compilation): {time.perf_counter() - started:.1f} s")
    # Wall-clock and CPU time (process_time: this process only, less sensitive to other jobs on a shared
    # machine); runs alternate, so a busy moment hits all.
    rates = {name: {"wall": [], "cpu": []} for name in runners}
    for repeat in range(args.repeats):
        for name, run in runners.items():
            wall, cpu = time.perf_counter(), time.process_time()
            tokens = run(model, tokenizer, prompts, spec)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rates[name]["wall"].append(tokens / wall)
            rates[name]["cpu"].append(tokens / cpu)
            print(f"{name:>20} #{repeat}: {tokens:6d} tokens in {wall:7.2f} s wall, {cpu:7.2f} s CPU "
                  f"= {tokens / wall:8.1f} tokens/s ({tokens / cpu:.1f} per CPU-second)")
    medians = {name: {kind: statistics.median(values) for kind, values in by_kind.items()}
               for name, by_kind in rates.items()}
    for name, value in medians.items():
        print(f"{name:>20}: median {value['wall']:8.1f} tokens/s, {value['cpu']:8.1f} tokens per CPU-second")
    naive = medians["naive generate"]
    for name, value in medians.items():
        if name != "naive generate":
            print(f"{name + ' / generate':>35}: {value['wall'] / naive['wall']:.2f}x wall, "
                  f"{value['cpu'] / naive['cpu']:.2f}x CPU")
    print(load())


if __name__ == "__main__":
    main()

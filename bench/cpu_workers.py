"""CPU worker layout: one process with every core against several one-thread processes at once.

Measures what ``executor.cpu_workers`` rests on: each process samples the demo's test prompts (HH-RLHF,
the demo's system turn, temperature 0.7, up to 160 new tokens, batch 32) with the builtin model, then
times a training forward and backward over 1,200 tokens; ``--processes N`` starts N copies at once, each
with ``--threads`` torch threads, and prints each one's numbers and their sum.

    .venv/bin/python bench/cpu_workers.py --processes 1 --threads 2
    .venv/bin/python bench/cpu_workers.py --processes 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from posweep.config import DEFAULT_MODEL, SamplingSpec
    from posweep.data import load_prompts, with_system_turn
    from posweep.data.demo_sources import DEMO_SYSTEM_PROMPT, resolve_source
    from posweep.generation import sample_responses
    from posweep.models import load_policy
    from posweep.sweep.inputs import subset

    model, tokenizer = load_policy(DEFAULT_MODEL)
    prompts, _ = load_prompts(resolve_source("builtin:hh-rlhf-test"))
    prompts = subset(prompts, 32)
    for item in prompts:
        item.prompt = with_system_turn(item.prompt, DEMO_SYSTEM_PROMPT)
    spec = SamplingSpec(max_new_tokens=160, temperature=0.7, top_p=1.0, seed=0, batch_size=32)
    started = time.perf_counter()
    samples = sample_responses(model, tokenizer, prompts, spec, progress=False)
    sample_s = time.perf_counter() - started
    tokens = sum(s.length for s in samples)

    ids = torch.randint(0, model.config.vocab_size, (1, 1200), generator=torch.Generator().manual_seed(0))
    model.train()
    started = time.perf_counter()
    for _ in range(2):
        hidden = model.model(input_ids=ids).last_hidden_state
        model.lm_head(hidden[:, -600:]).float().logsumexp(-1).mean().backward()
    train_s = (time.perf_counter() - started) / 2
    return {"threads": threads, "sampled_tokens": tokens, "sample_tok_s": round(tokens / sample_s, 1),
            "train_tok_s": round(1200 / train_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.threads)), flush=True)
        return
    command = [sys.executable, __file__, "--child", "--threads", str(args.threads)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                for _ in range(args.processes)]
    results = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    for index, result in enumerate(results):
        print(f"process {index}: {result}")
    print(f"{args.processes} process(es) x {args.threads} thread(s): sampling "
          f"{sum(r['sample_tok_s'] for r in results):.1f} tok/s, training {sum(r['train_tok_s'] for r in results):.1f} tok/s")


if __name__ == "__main__":
    main()

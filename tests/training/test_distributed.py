"""Two processes (``torchrun --nproc_per_node 2``, CPU, gloo) train as one: DDP and FSDP2 runs of DPO,
SimPO and SFT log the same per-step losses as a single process on the same pairs, each rank trains on
half of each step's tokens, one checkpoint is written, a non-finite loss on one rank stops both.

One ``torchrun`` launch trains every two-process run (process start-up is most of the cost on 2 cores).
The pairs are ordered so the last step has 1 pair for 2 processes: one rank runs a dummy pass.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from posweep.config import DataLimits, FSDPConfig, OptimConfig
from posweep.data import prepare_pairs
from posweep.training import get_reference_logps, train
from posweep.training.distributed import rank_micro_batches
from tests.training.test_trainer import make_pairs, read_log

REPO = Path(__file__).resolve().parents[2]
# 8 pairs × 1.125 epochs = 9 pairs in order: steps of 4, 4 and 1 pairs; micro-batches of 2 pairs.
OPTIM = OptimConfig(learning_rate=1e-3, epochs=1.125, batch_size=4, micro_batch_size=2, warmup_ratio=0.0, seed=3)
RUNS = {  # name: (method, hparams, fsdp)
    "dpo-ddp": ("dpo", {"beta": 0.5}, None),
    "simpo-ddp": ("simpo", {"beta": 2.0}, None),
    "sft-ddp": ("sft", {}, None),
    "dpo-fsdp": ("dpo", {"beta": 0.5}, FSDPConfig()),
    "simpo-fsdp-offload": ("simpo", {"beta": 2.0}, FSDPConfig(cpu_offload=True)),  # offload's code path (CPU to CPU)
}


def test_rank_micro_batches_cover_the_step_once_with_equal_counts():
    step = list(range(7))
    shares = [rank_micro_batches(step, rank, 2, 2) for rank in range(2)]
    assert [len(share) for share in shares] == [2, 2]  # the same number of passes on every rank
    assert sorted(i for share in shares for batch in share for i in batch) == step
    assert rank_micro_batches([5], 1, 2, 2) == [[]]  # no pair left: one dummy pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tokenizer):
    """{name: (two-process run folder, single-process run folder)} after one torchrun launch."""
    root = tmp_path_factory.mktemp("distributed")
    pairs = prepare_pairs("test-pairs", tokenizer, DataLimits(max_prompt_length=64, max_length=96), pairs=make_pairs())
    reference = get_reference_logps(str(tiny_model_dir), pairs, device="cpu", progress=False)
    jobs, single = [], {}
    for name, (method, hparams, fsdp) in RUNS.items():
        optim = OPTIM.model_copy(update={"fsdp": fsdp})
        ref = reference if method == "dpo" else None
        jobs.append((str(tiny_model_dir), pairs, root / "two" / name, method, hparams, optim, ref, None))
        key = (method, json.dumps(hparams))
        if key not in single:  # one single-process run per method: FSDP over one process is plain training
            single[key] = root / "one" / name
            train(str(tiny_model_dir), pairs, single[key], optim, method=method, hparams=hparams, reference_logps=ref,
                  progress=False, device="cpu")
    jobs.append((str(tiny_model_dir), pairs, root / "two" / "nan", "simpo", {"beta": 2.0}, OPTIM, None, 1))
    with open(root / "jobs.pkl", "wb") as f:
        pickle.dump(jobs, f)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                str(REPO / "tests" / "training" / "torchrun_train.py"), str(root / "jobs.pkl")],
                               env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return {name: (root / "two" / name, single[(method, json.dumps(hparams))])
            for name, (method, hparams, _) in RUNS.items()} | {"nan": (root / "two" / "nan", None)}


@pytest.mark.parametrize("name", list(RUNS))
def test_two_processes_log_the_single_process_losses(runs, name):
    two, one = runs[name]
    config = json.loads((two / "config.json").read_text())
    assert config["status"] == "done" and config["world_size"] == 2
    assert config["parallel"] == ("fsdp" if RUNS[name][2] else "ddp")
    assert config["optim"].get("fsdp") == (RUNS[name][2].model_dump() if RUNS[name][2] else None)
    log, reference = read_log(two), read_log(one)
    assert [r["step"] for r in log] == [1, 2, 3]
    for mine, theirs in zip(log, reference):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
        assert mine["tokens"] == theirs["tokens"]  # the step's tokens, summed over both ranks
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4)
        for metric in ("chosen_logps",) if name.startswith("sft") else ("reward_accuracy", "chosen_logps"):
            assert mine[metric] == pytest.approx(theirs[metric], abs=1e-4)
    # Rank 0 holds pairs 0 and 2 of a 4-pair step: about half of the step's tokens; all of the 1-pair step.
    for record in log[:2]:
        assert 0.3 < record["rank_tokens"] / record["tokens"] < 0.7
    assert log[2]["rank_tokens"] == log[2]["tokens"]
    # One checkpoint, an ordinary folder: the FSDP one holds the full weights gathered from the shards.
    from transformers import AutoModelForCausalLM

    assert sorted(p.name for p in two.iterdir()) == ["checkpoint", "config.json", "train_log.jsonl"]
    trained = AutoModelForCausalLM.from_pretrained(two / "checkpoint").state_dict()
    single = AutoModelForCausalLM.from_pretrained(one / "checkpoint").state_dict()
    assert trained.keys() == single.keys()
    assert max((trained[k] - single[k]).abs().max().item() for k in trained) < 1e-4


def test_non_finite_loss_on_one_rank_fails_both(runs):
    two, _ = runs["nan"]
    config = json.loads((two / "config.json").read_text())
    assert config["status"] == "failed" and "non-finite loss" in config["error"] and "step 1" in config["error"]
    assert not (two / "checkpoint").exists()

"""posweep sweep --dry-run: the plan and its cost, offline, with nothing written; the size formulas agree
with real models."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from posweep.cli import app
from posweep.config import LoraConfig
from posweep.sweep import load_config, validate_config
from posweep.sweep.dryrun import GIB, KNOWN_MODELS, dry_run, model_shape


def test_paper_dry_run_prints_the_plan_and_phi3_memory_offline_without_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["sweep", "paper", "--dry-run", "--tokens-per-second", "19000"])
    assert result.exit_code == 0, result.output
    assert "354 runs" in result.output and "microsoft/Phi-3-medium-4k-instruct" in result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip().startswith(("full ", "fsdp-8 ", "lora "))}
    assert set(rows) == {"full", "fsdp-8", "lora"}
    assert float(rows["full"][2]) == pytest.approx(13.96e9 * 4 / GIB, rel=0.01)  # float32 weights of 14B
    assert rows["full"][-1] == "no" and "per 1,000 pairs" in result.output
    assert list(tmp_path.iterdir()) == []  # no sweep folder, no run folders

    plan = dry_run(load_config("paper"))
    full, fsdp, lora = plan.estimates
    params = KNOWN_MODELS["microsoft/Phi-3-medium-4k-instruct"].params()
    assert full.weights + full.gradients + full.optimizer == 16 * params  # float32 + AdamW: 16 bytes/parameter
    assert fsdp.devices == 8 and fsdp.gradients + fsdp.optimizer == pytest.approx(12 * params / 8)
    assert lora.optimizer < full.optimizer / 100 and lora.weights < full.weights * 1.01
    assert plan.runs[("sft", "sft")] == 6 and plan.total_runs == 354


def test_sizes_match_a_real_model_and_peft(tiny_model_dir):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    shape, source = model_shape(str(tiny_model_dir))
    assert "local config" in source
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shape.params() == sum(p.numel() for p in model.parameters())
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(model, PeftLoraConfig(r=4, target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    assert shape.lora_params(lora) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_time_from_measured_tokens_per_second_and_local_pairs(tmp_path, tiny_model_dir):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(10)))
    config = validate_config({
        "model": str(tiny_model_dir), "train_data": {"source": str(pairs), "layout": "pairs"},
        "test_prompts": {"source": str(pairs), "layout": "prompts"}, "limits": {"max_prompt_length": 32, "max_length": 64},
        "optim": {"activation_checkpointing": True, "lora": {"r": 8}}, "sft": None,
        "methods": {"dpo": {"grid": {"beta": [0.1, 0.2]}}}, "executor": {"processes_per_run": 2}})
    sweep = tmp_path / "sweep"
    (sweep / "runs" / "dpo-x").mkdir(parents=True)
    (sweep / "runs" / "dpo-x" / "config.json").write_text(json.dumps({"status": "done", "tokens_per_second": 640.0}))
    plan = dry_run(config, device_memory_gib=1, out_dir=sweep)
    assert plan.pairs == 10 and plan.total_tokens == 2 * 10 * 2 * 64  # two runs, one epoch, two rows of ≤ 64
    assert plan.tokens_per_second == 640.0 and "measured" in plan.tokens_per_second_source
    assert [e.setting for e in plan.estimates] == ["full", "fsdp-2", "lora"]
    assert all(e.total < GIB for e in plan.estimates)

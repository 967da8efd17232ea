"""Sweep test fixtures: fake training / evaluation / judge stages, tiny data files, a micro config."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest


class FakeStages:
    """Fake training / evaluation / judge modules. A run's mean score is a function of its settings,
    carried from training to evaluation in a file inside the checkpoint."""

    def __init__(self):
        self.calls: list[tuple] = []  # (stage function, run folder name or model spec)
        self.fail_betas: set[float] = set()  # train_preference raises for these
        self.nan_betas: set[float] = set()  # train_preference reports a non-finite loss for these

    def count(self, name: str) -> int:
        return sum(1 for call in self.calls if call[0] == name)

    def trained(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] in ("train_sft", "train_preference")]

    def _train(self, out_dir: Path, score: float, config: dict):
        out_dir = Path(out_dir)
        (out_dir / "checkpoint").mkdir(parents=True)
        (out_dir / "checkpoint" / "score.json").write_text(json.dumps(score))
        (out_dir / "train_log.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
        (out_dir / "config.json").write_text(json.dumps(config))
        return SimpleNamespace(checkpoint_dir=out_dir / "checkpoint", status="done", error=None, steps=1,
                               final_loss=0.5)

    def train_sft(self, model_spec, pairs, optim, out_dir, progress=True):
        self.calls.append(("train_sft", Path(out_dir).name))
        assert len(pairs) > 0 and not progress
        return self._train(out_dir, 1000 * optim.learning_rate, {"method": "sft", "model": model_spec})

    def train_preference(self, model_spec, pairs, method, hparams, optim, out_dir, reference_logps=None,
                         progress=True):
        self.calls.append(("train_preference", Path(out_dir).name))
        assert Path(model_spec, "score.json").exists(), "preference runs start from the chosen SFT checkpoint"
        assert (reference_logps is not None) == (method != "simpo")
        beta = hparams.get("beta")
        if beta in self.fail_betas:
            raise RuntimeError(f"simulated crash for beta={beta}")
        if beta in self.nan_betas:
            Path(out_dir).mkdir(parents=True)
            return SimpleNamespace(checkpoint_dir=Path(out_dir) / "checkpoint", status="failed",
                                   error="non-finite loss (nan) at step 1", steps=0, final_loss=math.nan)
        return self._train(out_dir, beta or 0.0, {"method": method, "hparams": hparams})

    def get_reference_logps(self, reference_spec, pairs, progress=True, mixed_precision="no", packing=True,
                            model_dtype="float32"):
        self.calls.append(("get_reference_logps", reference_spec))
        return SimpleNamespace(spec=reference_spec)

    def get_baseline(self, sft_model_spec, prompts, judge, sampling, sft_model=None, progress=True):
        self.calls.append(("get_baseline", sft_model_spec))
        assert not progress and sampling.backend != "auto"  # the sweep resolved the backend
        samples = pd.DataFrame({"prompt_id": [p.prompt_id for p in prompts], "sft_score": [0.0] * len(prompts)})
        return SimpleNamespace(spec=sft_model_spec, samples=samples)

    def baseline_from_run(self, sft_spec, run_dir, prompts, judge, sampling):
        self.calls.append(("baseline_from_run", Path(run_dir).name))
        samples = pd.read_parquet(Path(run_dir) / "samples.parquet").rename(columns={"score": "sft_score"})
        return SimpleNamespace(spec=sft_spec, samples=samples)

    def evaluate_run(self, model_spec, sft_spec, prompts, judge, sampling, out_dir, baseline=None, sft_model=None,
                     selection=None, keep_token_ids=False, progress=True):
        self.calls.append(("evaluate_run", Path(out_dir).name))
        assert baseline is not None and baseline.spec == sft_spec and callable(sft_model)
        assert keep_token_ids == (Path(model_spec).parent.name.startswith("sft-"))
        score = json.loads(Path(model_spec, "score.json").read_text())
        n = len(prompts)
        pd.DataFrame({"prompt_id": [p.prompt_id for p in prompts], "response": ["ok"] * n, "score": [score] * n}) \
            .to_parquet(Path(out_dir) / "samples.parquet")
        metrics = {"n": n, "mean_score": score, "mean_score_ci": [score - 0.1, score + 0.1], "kl": 0.0,
                   "truncated_share": 0.0}
        Path(out_dir, "metrics.json").write_text(json.dumps(metrics))
        return metrics

    def load_judge(self, spec):
        self.calls.append(("load_judge", spec))
        return SimpleNamespace(is_stand_in=True)

    def write_report(self, sweep_dir):
        self.calls.append(("write_report", str(sweep_dir)))
        return Path(sweep_dir) / "report" / "index.html"

    def install(self, monkeypatch) -> None:
        modules = {
            "posweep.training": ["train_sft", "train_preference", "get_reference_logps"],
            "posweep.evaluation": ["get_baseline", "baseline_from_run", "evaluate_run"],
            "posweep.judges": ["load_judge"],
            "posweep.report": ["write_report"],
        }
        for name, functions in modules.items():
            module = types.ModuleType(name)
            for function in functions:
                setattr(module, function, getattr(self, function))
            monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def fakes(monkeypatch) -> FakeStages:
    stages = FakeStages()
    stages.install(monkeypatch)
    return stages


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("data")
    pairs = [{"prompt": f"Question {i}?", "chosen": f"A helpful answer {i}.", "rejected": f"No {i}."} for i in range(8)]
    prompts = [{"prompt": f"Test question {i}?", "chosen": f"Reference {i}."} for i in range(4)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in pairs))
    (folder / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in prompts))
    return folder / "pairs.jsonl", folder / "prompts.jsonl"


@pytest.fixture
def micro_config(tiny_model_dir, data_files) -> dict:
    """2 SFT runs, dpo × 2, simpo × 1: 5 runs."""
    train, test = data_files
    return {
        "model": str(tiny_model_dir),
        "train_data": {"source": str(train), "layout": "pairs"},
        "test_prompts": {"source": str(test), "layout": "prompts"},
        "judge": "hf:fake-judge",  # load_judge is faked
        "sampling": {"max_new_tokens": 4},
        "limits": {"max_prompt_length": 64, "max_length": 128},
        "optim": {"batch_size": 4, "micro_batch_size": 4},
        "sft": {"grid": {"learning_rate": [1e-5, 2e-5]}},
        "shared_grid": {"learning_rate": [1e-6]},
        "methods": {"dpo": {"grid": {"beta": [0.1, 0.3]}}, "simpo": {"grid": {"beta": [2.0]}}},
    }







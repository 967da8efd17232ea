"""A synthetic sweep folder whose per-sample values are known, shared by the analysis and report tests:
every number the tables report is recomputed by hand from the specs below (plain Python, not pandas or
posweep)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

PROMPTS = ["p0", "p1", "p2", "p3"]
SFT_SCORES = [0.4, 0.5, 0.6, 0.5]  # the chosen SFT model's samples: mean 0.5
HPARAM_COLUMNS = ["learning_rate", "epochs", "seed", "beta", "gamma_beta_ratio", "alpha", "tau", "epsilon", "lambda_"]
COLLAPSED_RESPONSES = ["", "   ", "a b c a b c a b c", "A fine and complete answer."]

# run_id, method, hyperparameters, per-prompt scores (None: the run did not finish)
RUNS = [
    ("sft-a", "sft", {"learning_rate": 1e-5, "epochs": 1}, SFT_SCORES),
    ("sft-b", "sft", {"learning_rate": 2e-5, "epochs": 1}, [0.3, 0.3, 0.3, 0.3]),
    ("dpo-1", "dpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 0.1}, [0.2, 0.3, 0.4, 0.3]),
    ("dpo-2", "dpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 0.5}, [0.9, 0.6, 0.5, 0.6]),
    ("dpo-3", "dpo", {"learning_rate": 2e-6, "epochs": 1, "beta": 0.1}, [0.6, 0.6, 0.5, 0.5]),
    ("dpo-4", "dpo", {"learning_rate": 2e-6, "epochs": 1, "beta": 0.5}, [0.1, 0.2, 0.1, 0.2]),
    ("dpo-5", "dpo", {"learning_rate": 3e-6, "epochs": 1, "beta": 0.1}, None),
    ("simpo-1", "simpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 2.0, "gamma_beta_ratio": 0.5}, [0.9, 0.9, 0.6, 0.6]),
    ("simpo-2", "simpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 2.0, "gamma_beta_ratio": 1.0}, [0.7, 0.6, 0.7, 0.6]),
    ("simpo-3", "simpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 5.0, "gamma_beta_ratio": 0.5}, [0.5, 0.4, 0.4, 0.3]),
    ("ln_dpo-1", "ln_dpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 1.0}, [0.6, 0.6, 0.6, 0.6]),
    ("ln_dpo-2", "ln_dpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 2.0}, [0.7, 0.5, 0.7, 0.6]),
    ("ln_dpo-3", "ln_dpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 5.0}, [0.2, 0.3, 0.2, 0.3]),
]


def mean(values) -> float:
    return sum(values) / len(values)


def sample_lengths(run_index: int) -> list[int]:
    return [10 * (i + 1) + run_index for i in range(len(PROMPTS))]


def sample_kls(run_index: int) -> list[float]:
    return [0.5 * (i + 1) + 0.1 * run_index for i in range(len(PROMPTS))]


def write_sweep(root: Path, runs=RUNS, *, judge_is_stand_in: bool = True, sft_run_id: str | None = "sft-a",
                without_samples: tuple[str, ...] = (), responses: dict[str, list[str]] | None = None,
                seeds: dict[str, int] | None = None, grids: dict | None = None,
                selection: tuple[str, ...] = ()) -> Path:
    """A sweep folder as docs/ARCHITECTURE.md lays it out, from (run_id, method, hparams, scores) specs.
    Per sample i of run number r: length 10(i+1)+r, kl 0.5(i+1)+0.1r, ln_kl = kl/length. ``selection``: the
    prompt ids of a selection split (metrics.json then holds the other prompts' metrics and
    ``selection_mean_score``, as evaluation writes them)."""
    responses = responses or {}
    seeds = seeds or {}
    rows = []
    for index, (run_id, method, hparams, scores) in enumerate(runs):
        row = {"run_id": run_id, "method": method, "stage": "sft" if method == "sft" else "po",
               "status": "done" if scores is not None else "failed", "seed": seeds.get(run_id, 0),
               "error": None if scores is not None else "Traceback (most recent call last):\nRuntimeError: loss is nan"}
        row.update({column: hparams.get(column, float("nan")) for column in HPARAM_COLUMNS if column != "seed"})
        run_dir = root / "runs" / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps({"method": method, "hparams": hparams}))
        if scores is not None:
            lengths, kls = sample_lengths(index), sample_kls(index)
            texts = responses.get(run_id, [f"answer {i} of {run_id} with its own words" for i in range(len(PROMPTS))])
            samples = pd.DataFrame({
                "prompt_id": PROMPTS, "response": texts, "length": lengths,
                "truncated": [text == COLLAPSED_RESPONSES[2] or (i == 3 and run_id in responses)
                              for i, text in enumerate(texts)],
                "score": scores, "chosen_score": [0.5] * len(PROMPTS), "sft_score": SFT_SCORES,
                "policy_logp": [-10.0] * len(PROMPTS), "sft_logp": [-10.0 - k for k in kls], "kl": kls,
                "ln_kl": [k / max(n, 1) for k, n in zip(kls, lengths)],
                "win_vs_chosen": [1.0 if s > 0.5 else 0.5 if s == 0.5 else 0.0 for s in scores],
                "win_vs_sft": [1.0 if s > b else 0.5 if s == b else 0.0 for s, b in zip(scores, SFT_SCORES)],
            })
            samples.insert(1, "split", [("selection" if pid in selection else "held_out") if selection else "both"
                                        for pid in PROMPTS])
            if run_id not in without_samples:
                samples.to_parquet(run_dir / "samples.parquet")
            reported = samples[samples["split"] != "selection"]
            metrics = {"n": len(reported), "truncated_share": float(reported["truncated"].mean()),
                       "empty_share": float((reported["response"].str.strip() == "").mean())}
            for name, column in [("mean_score", "score"), ("win_vs_chosen", "win_vs_chosen"),
                                 ("win_vs_sft", "win_vs_sft"), ("kl", "kl"), ("ln_kl", "ln_kl"), ("length", "length")]:
                value = float(reported[column].mean())
                metrics[name], metrics[f"{name}_ci"] = value, [value - 0.05, value + 0.05]
            if selection:
                chosen_on = samples[samples["split"] == "selection"]
                metrics.update(selection_n=len(chosen_on), selection_mean_score=float(chosen_on["score"].mean()))
            (run_dir / "metrics.json").write_text(json.dumps(metrics))
            row.update({key: value for key, value in metrics.items() if not key.endswith("_ci")})
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "summary.csv", index=False)
    sft_metrics = None
    if sft_run_id is not None:
        sft_metrics = json.loads((root / "runs" / sft_run_id / "metrics.json").read_text())
    info = {"judge": "demo", "judge_is_stand_in": judge_is_stand_in, "sft_run_id": sft_run_id,
            "sft_metrics": sft_metrics, "model": "builtin:smollm2-135m-instruct", "train_data": "demo",
            "test_prompts": {"source": "demo", "n": len(PROMPTS)}, "methods": grids or {},
            "selection": {"fraction": len(selection) / len(PROMPTS), "n_selection": len(selection),
                          "n_held_out": len(PROMPTS) - len(selection)} if selection else None}
    (root / "sweep_info.json").write_text(json.dumps(info))
    (root / "baseline").mkdir(exist_ok=True)
    pd.DataFrame({"prompt_id": PROMPTS, "response": ["sft"] * 4, "score": SFT_SCORES}).to_parquet(
        root / "baseline" / "samples.parquet")
    return root


def spec(run_id: str):
    return next(run for run in RUNS if run[0] == run_id)


def finished(method: str):
    return [run for run in RUNS if run[1] == method and run[3] is not None]


def grid_sweep(root: Path) -> Path:
    """dpo over beta x learning_rate: a lucky isolated run at (0.5, 1e-6) among bad neighbours, and a
    plateau of good runs around (0.1, 2e-6)."""
    betas, rates = [0.01, 0.05, 0.1, 0.3, 0.5], [1e-6, 2e-6, 3e-6]
    score = {(b, r): 0.2 for b in betas for r in rates}
    score.update({(0.5, 1e-6): 0.95, (0.1, 2e-6): 0.72, (0.05, 2e-6): 0.7, (0.3, 2e-6): 0.68,
                  (0.1, 1e-6): 0.69, (0.1, 3e-6): 0.66, (0.05, 1e-6): 0.6})
    runs = [("sft-a", "sft", {"learning_rate": 1e-5, "epochs": 1}, SFT_SCORES)]
    for i, ((beta, rate), value) in enumerate(score.items()):
        runs.append((f"dpo-{i}", "dpo", {"learning_rate": rate, "epochs": 1, "beta": beta}, [value] * 4))
    runs[-1] = (runs[-1][0], "dpo", runs[-1][2], None)  # one failed run: (0.5, 3e-6)
    return write_sweep(root, runs, grids={"dpo": {"beta": betas, "learning_rate": rates}})

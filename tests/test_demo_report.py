"""The committed demo report (docs/demo-report/) and the README's account of it agree, and the report meets
what the demo promises: at least 4 runs per method, a 75th-percentile run that is not the best, an SFT
baseline cut at most 10% of the time, best runs that moved away from SFT, the HH-RLHF test prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).parents[1]
REPORT = ROOT / "docs" / "demo-report"


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return pd.read_csv(REPORT / "sweep_summary.csv")


def best_runs(summary: pd.DataFrame) -> pd.DataFrame:
    done = summary[(summary.status == "done") & (summary.stage == "po")]
    return done.sort_values("mean_score", ascending=False).groupby("method").head(1).set_index("method")


def test_the_committed_report_shows_what_the_demo_promises(summary):
    done = summary[(summary.status == "done") & (summary.stage == "po")]
    for method, runs in done.groupby("method"):
        assert len(runs) >= 4, method
    best = pd.read_csv(REPORT / "t3_head_to_head_best.csv").set_index("row beats column")["run_id"]
    p75 = pd.read_csv(REPORT / "t3_head_to_head_p75.csv").set_index("row beats column")["run_id"]
    assert set(best.index) == set(p75.index) == {"dpo", "ln_dpo", "simpo"}
    assert all(best[m] != p75[m] for m in best.index)  # T3's second table is not the first again
    sft = summary[summary.stage == "sft"]
    assert len(sft) == 1 and float(sft.truncated_share.iloc[0]) <= 0.10
    assert (best_runs(summary).kl_ci_low > 0).all()
    info = json.loads((REPORT / "sweep_info.json").read_text())
    assert info["test_prompts"]["source"] == "builtin:hh-rlhf-test" and info["test_prompts"]["layout"] == "hh-rlhf"
    assert "builtin:hh-rlhf-test" in (REPORT / "index.html").read_text(encoding="utf-8")  # the report names them


def test_readme_numbers_match_the_committed_report(summary):
    """Every `value [low, high]` cell of the README's demo table is the best run's number in sweep_summary.csv."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## What the demo shows", 1)[1].split("\n## ", 1)[0]
    best = best_runs(summary)
    columns = {"mean score": "mean_score", "length (tokens)": "length", "KL vs SFT (nats)": "kl",
               "LN-KL (nats/token)": "ln_kl", "win vs chosen": "win_vs_chosen", "win vs SFT": "win_vs_sft"}
    checked = 0
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in columns:
            metric = columns[cells[0]]
            for method, cell in zip(("dpo", "ln_dpo", "simpo"), cells[2:5]):
                value, low, high = (float(x) for x in re.findall(r"-?\d+\.\d+", cell))
                row = best.loc[method]
                digits = 1 if metric == "length" else 3
                assert (value, low, high) == tuple(round(float(row[k]), digits) for k in
                                                   (metric, f"{metric}_ci_low", f"{metric}_ci_high")), (metric, method)
                checked += 1
    assert checked == 18

"""Reading a sweep folder: ``load_sweep(dir) -> Sweep`` (summary.csv, sweep_info.json, metrics.json; samples
lazily). Also the order methods are listed in, the text of a run's hyperparameters, and which prompts rank
runs and which are reported (the selection split), which every table uses.

The split (docs/DESIGN.md section 3): with ``test_prompts.selection_fraction`` every choice is ranked by
``selection_mean_score`` (the selection prompts) and every reported value comes from the held-out prompts
(``mean_score`` and the other metrics in metrics.json; the rows of samples.parquet whose ``split`` is not
``selection``). Without a split both are every prompt, as in the paper.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from posweep.losses import METHODS, hyperparameter_names
from posweep.metrics import METRIC_NAMES, flatten_intervals

SHARED_HPARAMS = ("learning_rate", "epochs")
# The registry's method-specific names (posweep.losses); the sweep's grids add any others.
KNOWN_HPARAMS = SHARED_HPARAMS + tuple(hyperparameter_names())
# Registry order, then SFT; methods the registry does not know come after, alphabetically.
METHOD_ORDER = (*METHODS, "sft")


def method_order(methods) -> list[str]:
    """Methods in registry order (dpo, ln_dpo, simpo, ...), then sft, unknown ones after, alphabetically."""
    return sorted(set(methods), key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))


def hparam_text(row: pd.Series | dict, columns: list[str]) -> str:
    """``"beta=0.1, learning_rate=1e-06"``: the non-NaN hyperparameters of a run."""
    parts = [f"{c}={row[c]:g}" for c in columns if c in row and pd.notna(row[c])]
    return ", ".join(parts) if parts else "(none)"


def reported_rows(samples: pd.DataFrame) -> pd.DataFrame:
    """The rows of a samples.parquet whose values are reported: all but the selection prompts' (every row
    without a split, or in a table written before the split existed)."""
    if "split" not in samples.columns:
        return samples
    return samples[samples["split"] != "selection"]


def number(value) -> float:
    """A JSON value as a float; null → NaN."""
    return math.nan if value is None else float(value)


@dataclass
class Sweep:
    """A loaded sweep folder. ``runs``: every row of summary.csv (any status), with metrics.json merged
    in (point estimates and ``<metric>_ci_low/_ci_high``). ``notes``: what is missing or could not be read."""

    root: Path
    runs: pd.DataFrame
    info: dict
    sft_score: float  # mean score of the chosen SFT model; NaN when unknown
    hparam_columns: list[str]
    notes: list[str] = field(default_factory=list)
    _samples: dict[str, pd.DataFrame | None] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> pd.DataFrame:
        """Preference-optimization runs that finished with a mean score."""
        runs = self.runs
        is_sft = (runs["method"] == "sft") | (runs["stage"] == "sft")
        keep = (runs["status"] == "done") & ~is_sft & np.isfinite(runs["mean_score"])
        return runs[keep]

    @property
    def has_split(self) -> bool:
        """Whether choices were made on held-out selection prompts (sweep_info.json's ``selection``)."""
        return bool(self.info.get("selection"))

    @property
    def rank_column(self) -> str:
        """The column runs are ranked by: ``selection_mean_score`` with a split, else ``mean_score``."""
        return "selection_mean_score" if self.has_split and "selection_mean_score" in self.runs.columns \
            else "mean_score"

    @property
    def prompts_note(self) -> str:
        """Which prompts rank the runs and which give the reported numbers, in one sentence."""
        info = self.info.get("selection") or {}
        if self.has_split:
            return (f"Runs are ranked on the {info.get('n_selection')} selection prompts (share "
                    f"{info.get('fraction')}); every number shown comes from the {info.get('n_held_out')} "
                    "held-out prompts.")
        test_prompts = self.info.get("test_prompts")
        n = test_prompts.get("n") if isinstance(test_prompts, dict) else None
        return (f"Runs are ranked and reported on the same {n or 'test'} prompts (as in the paper), so the "
                "numbers of chosen runs are optimistic; set test_prompts.selection_fraction to hold prompts out.")

    def reported_samples(self, run_id: str) -> pd.DataFrame | None:
        """The run's samples on the reported prompts (``reported_rows``); None when it has no samples."""
        samples = self.samples(run_id)
        return None if samples is None else reported_rows(samples)

    @property
    def methods(self) -> list[str]:
        return method_order(self.done["method"])

    def method_hparams(self, method: str) -> list[str]:
        """The hyperparameter columns that have a value for some run of ``method`` (seed excluded)."""
        rows = self.runs[self.runs["method"] == method]
        return [column for column in self.hparam_columns if rows[column].notna().any()]

    def samples(self, run_id: str) -> pd.DataFrame | None:
        """The run's samples.parquet (read once, then cached); None, with a note, when it is missing."""
        if run_id not in self._samples:
            path = self.root / "runs" / run_id / "samples.parquet"
            if path.exists():
                self._samples[run_id] = pd.read_parquet(path)
            else:
                self._samples[run_id] = None
                self.notes.append(f"run {run_id}: no samples ({path} missing); per-sample analyses skip it")
        return self._samples[run_id]


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """Read summary.csv, sweep_info.json and every done run's metrics.json (samples load lazily)."""
    root = Path(sweep_dir)
    summary_path = root / "summary.csv"
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} not found: is {root} a posweep sweep folder?")
    notes: list[str] = []
    runs = pd.read_csv(summary_path, dtype={"run_id": str, "method": str, "stage": str, "status": str})
    for column in ("run_id", "method", "status"):
        if column not in runs.columns:
            raise ValueError(f"{summary_path}: column {column!r} missing (columns: {', '.join(runs.columns)})")
    runs["status"] = runs["status"].str.strip().str.lower()
    if "stage" not in runs.columns:
        runs["stage"] = np.where(runs["method"] == "sft", "sft", "po")
    # Interval columns in the CSV may be strings like "[0.1, 0.2]": metrics.json is the source for them.
    runs = runs.drop(columns=[c for c in runs.columns if c.endswith("_ci")])
    runs = _merge_metrics(root, runs, notes)

    info_path = root / "sweep_info.json"
    info: dict = {}
    if info_path.exists():
        info = json.loads(info_path.read_text())
    else:
        notes.append(f"{info_path} missing: judge, SFT choice and grids unknown")

    grid_keys = {key for grid in (info.get("methods") or {}).values() if isinstance(grid, dict) for key in grid}
    candidates = list(KNOWN_HPARAMS) + sorted(grid_keys - set(KNOWN_HPARAMS) - {"seed"})
    hparam_columns = [c for c in candidates if c in runs.columns]
    for column in hparam_columns + (["seed"] if "seed" in runs.columns else []):
        runs[column] = pd.to_numeric(runs[column], errors="coerce")

    _note_unfinished(runs, notes)
    return Sweep(root=root, runs=runs, info=info, sft_score=_sft_score(root, runs, info, notes),
                 hparam_columns=hparam_columns, notes=notes)


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """The numbers of a metrics.json dict, intervals flattened (``posweep.metrics.flatten_intervals``)."""
    return {key: float(value) for key, value in flatten_intervals(metrics).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _merge_metrics(root: Path, runs: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Overlay each done run's metrics.json on its summary.csv row (metrics.json wins)."""
    records = []
    for run_id, status in zip(runs["run_id"], runs["status"]):
        record: dict[str, float] = {}
        path = root / "runs" / str(run_id) / "metrics.json"
        if status == "done" and path.exists():
            try:
                record = numeric_metrics(json.loads(path.read_text()))
            except json.JSONDecodeError as error:
                notes.append(f"{path}: unreadable ({error}); using summary.csv values")
        records.append(record)
    merged = pd.DataFrame(records, index=runs.index)
    runs = runs.copy()
    for column in merged.columns:
        values = pd.to_numeric(merged[column], errors="coerce")
        runs[column] = values.combine_first(pd.to_numeric(runs[column], errors="coerce")) \
            if column in runs.columns else values
    for metric in METRIC_NAMES:
        runs[metric] = pd.to_numeric(runs[metric], errors="coerce") if metric in runs.columns else np.nan
    no_score = runs[(runs["status"] == "done") & runs["mean_score"].isna()]
    for run_id in no_score["run_id"]:
        notes.append(f"run {run_id}: status done but no mean score (no metrics.json, no summary.csv value)")
    return runs


def _note_unfinished(runs: pd.DataFrame, notes: list[str]) -> None:
    for status in ("failed", "running", "pending"):
        rows = runs[runs["status"] == status]
        if len(rows):
            by_method = ", ".join(f"{m}: {n}" for m, n in rows["method"].value_counts().sort_index().items())
            ids = ", ".join(rows["run_id"].head(10)) + (" ..." if len(rows) > 10 else "")
            notes.append(f"{len(rows)} run(s) {status} ({by_method}): {ids}")
    if "error" in runs.columns:  # the sweep records why a run failed: show the first few reasons
        failed = runs[(runs["status"] == "failed") & runs["error"].notna()]
        for run_id, error in list(zip(failed["run_id"], failed["error"].astype(str)))[:5]:
            last_line = error.strip().splitlines()[-1] if error.strip() else "(no message)"  # a traceback's message
            notes.append(f"run {run_id} failed: {last_line[:200]}")
    unknown = sorted(set(runs["status"].fillna("(empty)")) - {"done", "failed", "running", "pending"})
    if unknown:
        notes.append(f"summary.csv has unknown status value(s) {unknown}; those runs are ignored")


def _sft_score(root: Path, runs: pd.DataFrame, info: dict, notes: list[str]) -> float:
    """The chosen SFT model's mean score: sweep_info.json, else its summary row, else the baseline samples."""
    score = (info.get("sft_metrics") or {}).get("mean_score")
    if score is not None:
        return float(score)
    sft_rows = runs[(runs["method"] == "sft") & (runs["status"] == "done") & runs["mean_score"].notna()]
    chosen = sft_rows[sft_rows["run_id"] == info.get("sft_run_id")]
    if len(chosen):
        return float(chosen["mean_score"].iloc[0])
    if len(sft_rows):  # the SFT choice rule of docs/DESIGN.md section 1: the best mean score (on the selection
        # prompts when the sweep has a split), reported on the held-out ones
        notes.append("SFT score taken from the best done SFT run (sweep_info.json does not name the choice)")
        rank = "selection_mean_score" if info.get("selection") and "selection_mean_score" in sft_rows else "mean_score"
        return float(sft_rows.sort_values(rank, ascending=False, kind="stable")["mean_score"].iloc[0])
    baseline = root / "baseline" / "samples.parquet"
    if baseline.exists():
        samples = reported_rows(pd.read_parquet(baseline))
        column = "score" if "score" in samples.columns else "sft_score"
        if column in samples.columns:
            return float(samples[column].mean())
    notes.append("SFT mean score unknown (no sft_metrics, no done SFT run, no baseline samples): "
                 "no SFT line, no share below SFT")
    return float("nan")

"""The ``posweep`` command: a thin typer layer over the Python API (every command calls one function)."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from posweep.config import DEFAULT_MODEL, UserError
from posweep.metrics import METRIC_NAMES

app = typer.Typer(help="Train, sweep and evaluate preference-optimization methods (DPO, LN-DPO, SimPO, ...).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
data_app = typer.Typer(help="Inspect and build data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()


def fail(message: str) -> None:
    # soft_wrap: a long path in the message stays one copyable string instead of being broken at the width.
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=1)


def _validation_message(error) -> str:
    """A pydantic ValidationError in one line: ``key: problem; key: problem``."""
    return "; ".join(f"{'.'.join(str(p) for p in item['loc']) or 'value'}: "
                     f"{'unknown key' if item['type'] == 'extra_forbidden' else item['msg']}"
                     for item in error.errors())


def user_errors(command):
    """Bad input ends a command with its message on one line and exit code 1, never a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from pydantic import ValidationError

        try:
            return command(*args, **kwargs)
        except ValidationError as error:
            fail(_validation_message(error))
        except (UserError, FileNotFoundError) as error:
            fail(str(error))
    return wrapper


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# ------------------------------------------------------------------------------------------------ data


@data_app.command("inspect")
@user_errors
def data_inspect(
    path: str = typer.Argument(..., help="JSONL / Parquet file, or a datasets name[:split] or save_to_disk folder."),
    layout: str = typer.Option("auto", help="auto | pairs | pku-saferlhf | hh-rlhf | prompts"),
    model: str = typer.Option(DEFAULT_MODEL, help="Model whose tokenizer counts tokens."),
    max_prompt_length: int = typer.Option(256), max_length: int = typer.Option(512),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Row counts, drop reasons and token-length statistics of a data source (the summary is cached)."""
    from posweep.config import DataLimits
    from posweep.data.inspect import inspect_source

    report = inspect_source(path, layout=layout, model=model,
                            limits=DataLimits(max_prompt_length=max_prompt_length, max_length=max_length))
    if as_json:
        console.print_json(json.dumps(report))
        return
    table = Table(title=f"{path}  ({report['layout']})", show_header=False)
    table.add_row("rows read", str(report["rows_read"]))
    table.add_row("rows kept", str(report["rows_kept"]))
    for reason, count in sorted(report["dropped"].items()):
        table.add_row(f"dropped: {reason}", str(count))
    for what, count in sorted(report.get("truncated", {}).items()):
        table.add_row(f"truncated: {what}", str(count))
    for name, stats in report.get("lengths", {}).items():
        if isinstance(stats, dict):
            table.add_row(f"{name} tokens", "mean {mean:.1f}  median {median:.0f}  min {min}  max {max}".format(**stats))
        else:
            table.add_row(name.replace("_", " "), f"{stats:.3f}")
    console.print(table)
    if report.get("cache"):
        console.print(f"summary stored at {report['cache']}")


# -------------------------------------------------------------------------------------------- training


def _train_command(method: str, model: str, data: str, out: Path, config: Path | None, layout: str,
                   hparams: dict, optim_overrides: dict, max_prompt_length: int | None, max_length: int | None,
                   scale: dict | None = None) -> None:
    from posweep.losses import METHODS
    from posweep.training import TrainJob, run_train_job

    values = {"model": model, "data": data, "out": out, "layout": layout, "method": method}
    job = TrainJob.from_file(config, **values) if config else TrainJob.model_validate(
        {k: v for k, v in values.items() if v is not None})
    if job.method is None or (method is None and job.method == "sft"):
        fail(f"posweep train needs --method (or `method:` in --config), one of: {', '.join(METHODS)} "
             "(or a combination such as dpo+nll); for supervised fine-tuning use `posweep sft`")
    optim = job.optim.model_copy(update={k: v for k, v in optim_overrides.items() if v is not None})
    optim = _with_scale(optim, **(scale or {}))
    limits = job.limits.model_copy(update={k: v for k, v in {"max_prompt_length": max_prompt_length,
                                                              "max_length": max_length}.items() if v is not None})
    job = job.model_copy(update={"optim": optim, "limits": limits,
                                 "hparams": {**job.hparams, **{k: v for k, v in hparams.items() if v is not None}}})
    result = run_train_job(job)
    if result.status != "done":
        fail(f"{job.method} run failed: {result.error}")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, the main process speaks for the run
        console.print(f"[green]done[/] {result.steps} steps, final loss {result.final_loss:.4f}, "
                      f"{result.tokens_per_second:.0f} tokens/s → {result.checkpoint_dir}")


def _with_scale(optim, model_dtype: str | None = None, activation_checkpointing: bool = False, fsdp: bool = False,
                fsdp_cpu_offload: bool = False, lora_r: int | None = None, lora_alpha: float | None = None,
                lora_dropout: float | None = None, lora_target: str | None = None, lora_merge: bool = False,
                lora_quantize: str | None = None, report_to: str | None = None):
    """``optim`` with the layout flags of ``posweep train`` / ``posweep sft`` applied (validated again)."""
    from posweep.config import OptimConfig

    values = optim.model_dump()
    if model_dtype:
        values["model_dtype"] = model_dtype
    if activation_checkpointing:
        values["activation_checkpointing"] = True
    if fsdp or fsdp_cpu_offload:
        values["fsdp"] = {**(values.get("fsdp") or {}), **({"cpu_offload": True} if fsdp_cpu_offload else {})}
    lora = {k: v for k, v in {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "quantize": lora_quantize,
                              "target_modules": lora_target.split(",") if lora_target and lora_target != "all-linear"
                              else lora_target, "merge": lora_merge or None}.items() if v is not None}
    if lora:
        values["lora"] = {**(values.get("lora") or {}), **lora}
    if report_to:
        values["report_to"] = [name.strip() for name in report_to.split(",") if name.strip()]
    return OptimConfig.model_validate(values)


_MODEL = typer.Option(None, help=f"Model spec: {DEFAULT_MODEL} (default), a folder, or a hub id.")
_DATA = typer.Option(None, help="Preference pairs: JSONL / Parquet / datasets name.")
_OUT = typer.Option(None, help="Output folder: checkpoint/, config.json, train_log.jsonl.")
_CONFIG = typer.Option(None, help="YAML/JSON with TrainJob fields; options given here override it.")
# Layout and scale (the same for sft and train); run several processes with
# `torchrun --nproc_per_node N -m posweep.cli train ...` (data parallel; --fsdp shards instead).
_MODEL_DTYPE = typer.Option(None, "--model-dtype", help="float32 (default) | bfloat16: the weights' dtype.")
_CHECKPOINTING = typer.Option(False, "--activation-checkpointing", help="Recompute decoder layers in backward.")
_FSDP = typer.Option(False, "--fsdp", help="Shard weights, gradients, optimizer over torchrun's processes (FSDP2).")
_FSDP_OFFLOAD = typer.Option(False, "--fsdp-cpu-offload", help="FSDP with shards kept in CPU memory.")
_LORA_R = typer.Option(None, "--lora-r", help="Train LoRA adapters (peft) of this rank instead of all weights.")
_LORA_ALPHA = typer.Option(None, "--lora-alpha", help="LoRA scale numerator (default 32).")
_LORA_DROPOUT = typer.Option(None, "--lora-dropout", help="LoRA dropout (default 0).")
_LORA_TARGET = typer.Option(None, "--lora-target", help="all-linear (default) or module names: q_proj,v_proj")
_LORA_MERGE = typer.Option(False, "--lora-merge", help="Save the merged model instead of the adapter.")
_LORA_QUANTIZE = typer.Option(None, "--lora-quantize", help="no | 4bit (QLoRA: needs CUDA and bitsandbytes).")
_REPORT_TO = typer.Option(None, "--report-to", help="Trackers, comma-separated: tensorboard,wandb,mlflow")


@app.command()
@user_errors
def sft(model: str | None = _MODEL, data: str | None = _DATA, out: Path | None = _OUT,
        config: Path | None = _CONFIG, layout: str = typer.Option("pairs", help="pairs | pku-saferlhf"),
        learning_rate: float | None = typer.Option(None, "--lr"), epochs: float | None = None,
        batch_size: int | None = None, micro_batch_size: int | None = None, max_steps: int | None = None,
        seed: int | None = None, mixed_precision: str | None = typer.Option(None, help="no | bf16 | fp16"),
        max_prompt_length: int | None = None, max_length: int | None = None,
        model_dtype: str | None = _MODEL_DTYPE, activation_checkpointing: bool = _CHECKPOINTING, fsdp: bool = _FSDP,
        fsdp_cpu_offload: bool = _FSDP_OFFLOAD, lora_r: int | None = _LORA_R, lora_alpha: float | None = _LORA_ALPHA,
        lora_dropout: float | None = _LORA_DROPOUT, lora_target: str | None = _LORA_TARGET,
        lora_merge: bool = _LORA_MERGE, lora_quantize: str | None = _LORA_QUANTIZE,
        report_to: str | None = _REPORT_TO) -> None:
    """Supervised fine-tuning on the chosen responses (loss on response tokens only)."""
    _train_command("sft", model, data, out, config, layout, {},
                   dict(learning_rate=learning_rate, epochs=epochs, batch_size=batch_size, micro_batch_size=micro_batch_size,
                        max_steps=max_steps, seed=seed, mixed_precision=mixed_precision), max_prompt_length, max_length,
                   dict(model_dtype=model_dtype, activation_checkpointing=activation_checkpointing, fsdp=fsdp,
                        fsdp_cpu_offload=fsdp_cpu_offload, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        lora_target=lora_target, lora_merge=lora_merge, lora_quantize=lora_quantize, report_to=report_to))


def _parse_hparams(pairs: list[str]) -> dict[str, float]:
    """``["beta=0.1", "nll_weight=0.5"]`` → ``{"beta": 0.1, "nll_weight": 0.5}``; a bad item is a user error."""
    values = {}
    for item in pairs:
        name, sep, text = item.partition("=")
        try:
            values[name.strip()] = float(text)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise UserError(f"--hparam {item!r}: expected NAME=NUMBER, e.g. --hparam beta=0.1")
    return values


@app.command()
@user_errors
def train(method: str | None = typer.Option(None, help="A method of `posweep methods` (dpo, ln_dpo, simpo, ...) "
                                                        "or a combination such as dpo+nll."),
          model: str | None = _MODEL, data: str | None = _DATA, out: Path | None = _OUT,
          config: Path | None = _CONFIG, layout: str = typer.Option("pairs", help="pairs | pku-saferlhf"),
          hparam: list[str] = typer.Option([], "--hparam", metavar="NAME=VALUE",
                                           help="A hyperparameter of the method (repeatable): --hparam ld_alpha=0.5. "
                                                "`posweep methods` lists each method's names."),
          beta: float | None = typer.Option(None, help="Shortcut for --hparam beta=..."),
          gamma_beta_ratio: float | None = typer.Option(None, help="Shortcut for --hparam gamma_beta_ratio=..."),
          alpha: float | None = None, tau: float | None = None, epsilon: float | None = None,
          nll_weight: float | None = None, odds_ratio_weight: float | None = None,
          learning_rate: float | None = typer.Option(None, "--lr"), epochs: float | None = None,
          batch_size: int | None = None, micro_batch_size: int | None = None, max_steps: int | None = None,
          seed: int | None = None, mixed_precision: str | None = typer.Option(None, help="no | bf16 | fp16"),
          max_prompt_length: int | None = None, max_length: int | None = None,
          model_dtype: str | None = _MODEL_DTYPE, activation_checkpointing: bool = _CHECKPOINTING, fsdp: bool = _FSDP,
          fsdp_cpu_offload: bool = _FSDP_OFFLOAD, lora_r: int | None = _LORA_R, lora_alpha: float | None = _LORA_ALPHA,
          lora_dropout: float | None = _LORA_DROPOUT, lora_target: str | None = _LORA_TARGET,
          lora_merge: bool = _LORA_MERGE, lora_quantize: str | None = _LORA_QUANTIZE,
          report_to: str | None = _REPORT_TO) -> None:
    """Preference optimisation from a (SFT) model; reference log-probs come from the shared cache.

    Hyperparameters: ``--hparam NAME=VALUE`` for any method's (repeatable); the older per-name options
    (--beta, --tau, ...) still work and win over a --hparam of the same name."""
    shortcuts = dict(beta=beta, gamma_beta_ratio=gamma_beta_ratio, alpha=alpha, tau=tau, epsilon=epsilon,
                     nll_weight=nll_weight, odds_ratio_weight=odds_ratio_weight)
    _train_command(method, model, data, out, config, layout,
                   {**_parse_hparams(hparam), **{k: v for k, v in shortcuts.items() if v is not None}},
                   dict(learning_rate=learning_rate, epochs=epochs, batch_size=batch_size, micro_batch_size=micro_batch_size,
                        max_steps=max_steps, seed=seed, mixed_precision=mixed_precision), max_prompt_length, max_length,
                   dict(model_dtype=model_dtype, activation_checkpointing=activation_checkpointing, fsdp=fsdp,
                        fsdp_cpu_offload=fsdp_cpu_offload, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        lora_target=lora_target, lora_merge=lora_merge, lora_quantize=lora_quantize, report_to=report_to))


# --------------------------------------------------------------------------------------------- methods


@app.command()
@user_errors
def methods(as_json: bool = typer.Option(False, "--json", help="Print the methods as JSON.")) -> None:
    """Every method: loss, defaults, study grid, reference need, TRL name, components of a combination."""
    from posweep.losses import describe_methods

    rows = describe_methods()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    console.print("rw = log π(y_w) − log πref(y_w); lengths |y| in policy tokens; "
                  "a+b+... combines methods (hyperparameters shared by name, weights <method>_weight)",
                  soft_wrap=True, markup=False)
    for row in rows:
        # One block per method, never folded: a formula or TRL name stays one copyable line.
        lines = [f"[bold]{escape(row['name'])}[/]  reference: {'yes' if row['needs_reference'] else 'no'}"
                 f"  TRL 1.16: {escape(row['trl_name'] or '-')}"]
        if row["components"]:
            lines.append("  components  " + " + ".join(f"{w:g}·{c}" for c, w in row["components"].items()))
        lines.append(f"  loss        {escape(row['formula'])}")
        if row["hyperparameters"]:
            lines.append("  defaults    " + ", ".join(f"{k}={v:g}" for k, v in row["hyperparameters"].items()))
            lines.append("  study grid  " + "; ".join(
                f"{k} ∈ {{{', '.join(f'{v:g}' for v in values)}}}" for k, values in row["study_grid"].items()))
        if row["inputs"]:
            lines.append("  needs       " + ", ".join(row["inputs"]))
        if row["batch_level"]:
            lines.append("  batch-level its value depends on which pairs share a micro-batch")
        lines.append(f"  source      {escape(row['source'])}")
        console.print("\n".join(lines), soft_wrap=True, highlight=False)


# ---------------------------------------------------------------------------------------------- sweeps


def _print_sweep_result(finished) -> None:
    result = finished.sweep
    counts = ", ".join(f"{n} {status}" for status, n in result.counts.items() if n)
    console.print(f"sweep folder: {result.out_dir}  ({counts})")
    console.print(f"summary: {result.summary_path}")
    if finished.report_path:
        console.print(f"[bold]report: {finished.report_path}[/]")
    else:
        console.print(f"[yellow]report: not written[/] ({finished.report_error}); summary.csv only")
    if result.counts.get("failed"):
        console.print("[yellow]some runs failed[/] (errors in summary.csv and state.sqlite); "
                      "rerun with --retry-failed to retry them")


@app.command()
@user_errors
def sweep(config: str = typer.Argument(..., help="Sweep YAML file, or a preset name (demo, paper)."),
          out: Path | None = typer.Option(None, "--out", help="Sweep folder; an existing one is resumed or extended."),
          retry_failed: bool = typer.Option(False, "--retry-failed", help="Run failed runs again."),
          executor: str | None = typer.Option(None, help="local | ray (default: the config's executor.kind)"),
          address: str | None = typer.Option(None, help="Ray cluster address, e.g. auto"),
          dry_run: bool = typer.Option(False, "--dry-run", help="Validate, print the plan, memory and time; run nothing."),
          device_memory: float = typer.Option(80.0, "--device-memory", help="Dry run: GiB per device."),
          tokens_per_second: float | None = typer.Option(None, "--tokens-per-second",
                                                         help="Dry run: training throughput for the time estimate.")) -> None:
    """Run, resume or extend a sweep: SFT grid, best SFT, every method's grid, summary.csv and report."""
    if dry_run:
        from posweep.sweep.config import load_config
        from posweep.sweep.dryrun import dry_run as plan_cost
        from posweep.sweep.dryrun import format_dry_run

        loaded = load_config(config)
        console.print(format_dry_run(plan_cost(loaded, device_memory, tokens_per_second, out), loaded),
                      soft_wrap=True, markup=False, highlight=False)
        return
    from posweep.workflow import sweep_and_report

    if out is None:
        fail("posweep sweep needs --out DIR (the sweep folder), or --dry-run")
    if executor not in (None, "local", "ray"):
        fail(f"--executor must be local or ray, got {executor!r}")
    _print_sweep_result(sweep_and_report(config, out, retry_failed=retry_failed, executor=executor, address=address))


@app.command()
@user_errors
def demo(quick: bool = typer.Option(False, "--quick", help="One setting per method (a few minutes)."),
         out: Path = typer.Option(Path("runs/demo"), "--out", help="Sweep folder.")) -> None:
    """The embedded demo end to end on the builtin model: SFT, then DPO, LN-DPO and SimPO grids, report."""
    from posweep.workflow import run_demo

    _print_sweep_result(run_demo(quick=quick, out_dir=out))


# ------------------------------------------------------------------------------------------- evaluate


@app.command()
@user_errors
def evaluate(model: str = typer.Option(..., "--model", help="The run's model: folder, hub id or builtin:NAME."),
             sft: str = typer.Option(..., "--sft", help="The SFT model the run is compared with (KL, win rate)."),
             prompts: str = typer.Option(..., "--prompts", help="Test prompts: JSONL / Parquet / datasets name."),
             judge: str = typer.Option(..., "--judge", help="Judge spec: demo, hf:PATH or oasst:PATH."),
             out: Path | None = typer.Option(None, "--out", help="Output folder (default evaluations/<model name>)."),
             max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
             temperature: float = typer.Option(0.7, "--temperature", help="0 samples greedily."),
             top_p: float = typer.Option(1.0, "--top-p"),
             batch_size: int = typer.Option(16, "--batch-size"),
             seed: int = typer.Option(0, "--seed"),
             backend: str = typer.Option("auto", "--backend", help="Sampling backend: auto (vllm when installed "
                                         "on CUDA, else hf), hf, hf-compiled or vllm."),
             limit: int | None = typer.Option(None, "--limit", help="Evaluate only the first N prompts.")) -> None:
    """Sample, score and compare one model with its SFT model: writes samples.parquet and metrics.json."""
    from posweep.config import SamplingSpec
    from posweep.data import load_prompts
    from posweep.evaluation import evaluate_run
    from posweep.generation import resolve_backend
    from posweep.judges import load_judge

    try:
        backend = resolve_backend(backend)
    except ValueError as error:
        fail(str(error))
    sampling = SamplingSpec(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            batch_size=batch_size, seed=seed, backend=backend)
    items, _ = load_prompts(prompts)
    if limit is not None:
        items = items[:limit]
    loaded_judge = load_judge(judge)
    out_dir = out or Path("evaluations") / Path(model).name
    metrics = evaluate_run(model, sft, items, loaded_judge, sampling, out_dir)
    table = Table(title=f"{model} vs {sft}  (n = {metrics['n']}, judge {loaded_judge.name}"
                        f"{', a stand-in' if loaded_judge.is_stand_in else ''}; sampled with {backend}, "
                        f"KL at temperature {metrics['kl_temperature']:g})")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("95% interval", justify="right")
    for name in METRIC_NAMES:
        low, high = metrics[f"{name}_ci"]
        table.add_row(name, f"{metrics[name]:.4g}", f"[{low:.4g}, {high:.4g}]")
    table.add_row("truncated_share", f"{metrics['truncated_share']:.3f}", "")
    table.add_row("empty_share", f"{metrics['empty_share']:.3f}", "")
    console.print(table)
    console.print(f"wrote {out_dir / 'samples.parquet'} and {out_dir / 'metrics.json'}")


# ------------------------------------------------------------------------------------------------ report


@app.command()
@user_errors
def report(sweep_dir: Path = typer.Argument(..., help="A sweep folder (with summary.csv).")) -> None:
    """Write DIR/report/ (index.html, summary.md, CSVs, figures) and print the recommendation."""
    from posweep.report import write_report

    try:
        index = write_report(sweep_dir)
    except ValueError as error:  # a summary.csv the analyses cannot read
        fail(str(error))
    console.print(f"wrote {index}")
    recommendation = json.loads((index.parent / "recommendation.json").read_text())
    if recommendation is None:
        console.print("no recommendation: no preference-optimization run finished")
    else:
        console.print(f"[bold]recommended:[/] {recommendation['method']} {recommendation['hparams']}")
        console.print(recommendation["evidence"])


# ------------------------------------------------------------------------------------------ build-demo


@data_app.command("build-demo")
@user_errors
def data_build_demo(
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: the package's demo_data/)."),
    train_prompts: int = typer.Option(200, "--train-prompts", min=2, help="Training prompts (half harmful)."),
    k: int = typer.Option(3, "--k", min=2, help="Samples per training prompt (pair = best vs worst)."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1,
                                       help="Token limit; a sample that reaches it is drawn again with twice as many."),
    seed: int = typer.Option(0, "--seed"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="The policy that samples."),
    hh_rlhf: Path | None = typer.Option(None, "--hh-rlhf", exists=True, dir_okay=False,
                                        help="The published HH-RLHF harmless-base test.jsonl.gz: ship its test prompts."),
) -> None:
    """Rebuild the demo data: sample on-policy responses until they end, label them, write pairs."""
    import importlib.resources

    from posweep.demo_build import build_demo_data

    out = out or Path(str(importlib.resources.files("posweep") / "demo_data"))
    report = build_demo_data(out, train_prompts, k, max_new_tokens, seed, model, hh_rlhf=hh_rlhf)
    tests = report["test"]["kept_rows"] if report["test"] else 0
    console.print(f"{report['pairs']} pairs ({report['near_ties_dropped']} near-ties, "
                  f"{report['too_few_finished_dropped']} without two finished samples dropped), "
                  f"{tests} HH-RLHF test prompts, in {report['seconds']['this_run']:.0f} s; wrote {out}")


if __name__ == "__main__":  # `torchrun --nproc_per_node N -m posweep.cli train ...`
    app()

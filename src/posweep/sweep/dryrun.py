"""``posweep sweep CONFIG --dry-run``: the plan and what it costs, before anything is trained or downloaded.

In: a validated ``SweepConfig``, the memory of one device (GiB), optionally a tokens/s figure (given, or
measured by the finished runs of an existing sweep folder). Out: a ``DryRun``: runs per stage and method,
the model's size (from a local ``config.json`` when one is on disk: a model folder, the converted builtin
model, the Hugging Face cache; else from ``KNOWN_MODELS``), estimated peak memory per run for full
fine-tuning on one device, FSDP over N devices and LoRA, each checked against the device memory, and an
upper bound on the tokens (hence time) per run. Nothing is written, nothing is fetched.

The estimates (bytes; P parameters, w bytes per weight: 4 for float32, 2 for bfloat16 ``model_dtype``):

- full fine-tuning: weights P·w + gradients P·w + AdamW's two moments 2·P·w (16 bytes/parameter in float32);
- FSDP over N: those states / N, plus the gathered weights of two decoder layers (the one running and the
  one prefetched) and of the root unit (embeddings, LM head) while it is unsharded;
- LoRA: the frozen base P·w (0.5 bytes/parameter in NF4 with ``quantize: 4bit``) plus the adapters in
  float32 with their gradients and AdamW states (16 bytes per adapter parameter);
- activations, the same for all three: a micro-batch of preference pairs is 2·micro_batch_size rows of at
  most ``limits.max_length`` tokens. Per token and decoder layer a Llama-shaped block keeps about
  (6·h + 2·h_kv + 4·i) values for its backward pass (h hidden, h_kv key/value width, i MLP width; fused
  attention keeps no attention matrix), in 2 bytes under bf16/fp16 autocast, else in the weights' dtype.
  Activation checkpointing keeps only each layer's input (h values) plus one layer's full set. The
  chunked LM head adds 1024 positions × vocabulary × 12 bytes.

They are rough (about ±30%) and leave out the CUDA context and allocator slack (1–3 GiB on a GPU).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from posweep.config import LoraConfig, cache_root
from posweep.sweep.config import SweepConfig
from posweep.sweep.plan import plan_runs

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    """The sizes that set a Llama-shaped decoder's parameter count and activation memory."""

    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    tied: bool

    @property
    def kv_width(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder block, by the names LoRA targets."""
        h, kv, i = self.hidden, self.kv_width, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def layer_params(self) -> int:
        return sum(a * b for a, b in self.linears().values()) + 2 * self.hidden  # + two norms

    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * self.layer_params() + self.hidden

    def lora_params(self, lora: LoraConfig) -> int:
        linears = self.linears()
        fused = {"qkv_proj": (self.hidden, self.hidden + 2 * self.kv_width), "gate_up_proj": (self.hidden, 2 * self.intermediate)}
        names = list(linears) if lora.target_modules == "all-linear" else lora.target_modules
        shapes = [({**linears, **fused})[name] for name in names if name in linears or name in fused]
        return self.layers * sum(lora.r * (a + b) for a, b in shapes)


# Shapes from the models' published config.json files (used when no local config is on disk).
_SMOLLM2_135M = ModelShape(vocab=49152, hidden=576, layers=30, intermediate=1536, heads=9, kv_heads=3, tied=True)
KNOWN_MODELS: dict[str, ModelShape] = {
    "microsoft/Phi-3-medium-4k-instruct": ModelShape(32064, 5120, 40, 17920, 40, 10, tied=False),
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
    "builtin:smollm2-135m-instruct": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": ModelShape(49152, 2048, 24, 8192, 32, 32, tied=True),
    "meta-llama/Llama-3.1-8B-Instruct": ModelShape(128256, 4096, 32, 14336, 32, 8, tied=False),
}


def shape_from_config(values: dict) -> ModelShape:
    values = values.get("text_config", values)
    heads = values["num_attention_heads"]
    return ModelShape(vocab=values["vocab_size"], hidden=values["hidden_size"], layers=values["num_hidden_layers"],
                      intermediate=values["intermediate_size"], heads=heads,
                      kv_heads=values.get("num_key_value_heads") or heads,
                      tied=bool(values.get("tie_word_embeddings", False)))


def local_config(spec: str) -> Path | None:
    """A config.json for ``spec`` already on disk (never downloaded)."""
    candidates = [Path(spec).expanduser() / "config.json"]
    if spec.startswith("builtin:"):
        candidates.append(cache_root() / "models" / spec.split(":", 1)[1] / "config.json")
    elif spec.count("/") == 1:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "config.json")
            if isinstance(cached, str):
                candidates.append(Path(cached))
        except Exception:  # an unusual cache layout must not break a dry run
            pass
    return next((path for path in candidates if path.is_file()), None)


def model_shape(spec: str) -> tuple[ModelShape | None, str]:
    """(shape, where it came from)."""
    path = local_config(spec)
    if path is not None:
        try:
            return shape_from_config(json.loads(path.read_text())), f"local config {path}"
        except (KeyError, ValueError, TypeError):
            pass
    if spec in KNOWN_MODELS:
        return KNOWN_MODELS[spec], "posweep's table of known models"
    return None, "unknown: no local config.json and not in posweep's table of known models"


@dataclass
class Estimate:
    setting: str  # "full", "fsdp-8", "lora"
    devices: int
    weights: float  # bytes per device
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def activation_bytes(shape: ModelShape, rows: int, length: int, element: int, checkpointing: bool) -> float:
    tokens = rows * length
    per_layer = (6 * shape.hidden + 2 * shape.kv_width + 4 * shape.intermediate) * element * tokens
    head = 1024 * shape.vocab * 12
    if checkpointing:
        return shape.layers * shape.hidden * element * tokens + per_layer + head
    return shape.layers * per_layer + head


def estimates(shape: ModelShape, config: SweepConfig, fsdp_devices: int) -> list[Estimate]:
    optim = config.optim
    w = 4 if optim.model_dtype == "float32" else 2
    element = 2 if optim.mixed_precision != "no" else w
    rows = 2 * optim.micro_batch_size  # preference runs: chosen and rejected rows (SFT has half)
    act = activation_bytes(shape, rows, config.limits.max_length, element, optim.activation_checkpointing)
    p = shape.params()
    gathered = (2 * shape.layer_params() + shape.vocab * shape.hidden * (1 if shape.tied else 2)) * w
    lora = optim.lora or LoraConfig()
    base = p * (0.5 if lora.quantize == "4bit" else w)
    adapters = shape.lora_params(lora)
    return [Estimate("full", 1, p * w, p * w, 2 * p * w, act),
            Estimate(f"fsdp-{fsdp_devices}", fsdp_devices, p * w / fsdp_devices + gathered, p * w / fsdp_devices,
                     2 * p * w / fsdp_devices, act),
            Estimate("lora", 1, base + 4 * adapters, 4 * adapters, 8 * adapters, act)]


def count_pairs(config: SweepConfig) -> int | None:
    """Pairs per epoch when knowable offline: the configured limit, else the rows of a local JSONL file."""
    source = Path(config.train_data.source).expanduser()
    rows = None
    if source.is_file() and source.suffix in (".jsonl", ".ndjson"):
        with open(source, "rb") as f:
            rows = sum(1 for line in f if line.strip())
    limit = config.train_data.limit
    return min(limit, rows) if limit and rows is not None else (limit or rows)


def measured_tokens_per_second(out_dir: Path | None) -> float | None:
    """Mean tokens/s of the finished runs of an existing sweep folder."""
    if out_dir is None or not (Path(out_dir) / "runs").is_dir():
        return None
    rates = []
    for path in Path(out_dir, "runs").glob("*/config.json"):
        try:
            values = json.loads(path.read_text())
        except ValueError:
            continue
        if values.get("status") == "done" and values.get("tokens_per_second"):
            rates.append(values["tokens_per_second"])
    return sum(rates) / len(rates) if rates else None


@dataclass
class DryRun:
    runs: dict[tuple[str, str], int]  # (stage, method) -> runs
    model: str
    shape: ModelShape | None
    shape_source: str
    device_memory: float  # bytes
    estimates: list[Estimate] = field(default_factory=list)
    pairs: int | None = None
    tokens_per_run: dict[str, float] = field(default_factory=dict)  # stage -> upper bound, per epoch listed below
    tokens_per_second: float | None = None
    tokens_per_second_source: str = ""
    total_tokens: float | None = None

    @property
    def total_runs(self) -> int:
        return sum(self.runs.values())


def dry_run(config: SweepConfig, device_memory_gib: float = 80.0, tokens_per_second: float | None = None,
            out_dir: Path | None = None) -> DryRun:
    """The plan of ``config`` and its estimated cost (see the module docstring); touches nothing."""
    runs = plan_runs(config)
    shape, source = model_shape(config.model)
    n = config.executor.processes_per_run
    plan = DryRun(dict(Counter((run.stage, run.method) for run in runs)), config.model, shape, source,
                  device_memory_gib * GIB, estimates(shape, config, n if n > 1 else 8) if shape else [],
                  pairs=count_pairs(config))
    measured = measured_tokens_per_second(out_dir)
    plan.tokens_per_second = tokens_per_second or measured
    plan.tokens_per_second_source = "given" if tokens_per_second else ("measured by this sweep's finished runs"
                                                                       if measured else "")
    if plan.pairs:
        length = config.limits.max_length
        per_pair = {"sft": length, "po": 2 * length}  # upper bound: every row at max_length
        plan.total_tokens = sum(plan.pairs * run.optim.epochs * per_pair[run.stage] for run in runs)
        plan.tokens_per_run = {stage: plan.pairs * per_pair[stage] for stage in per_pair}
    return plan


def _gib(value: float) -> str:
    return f"{value / GIB:,.1f}"


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:,.1f} h" if hours >= 1 else f"{seconds / 60:,.0f} min"


def format_dry_run(plan: DryRun, config: SweepConfig) -> str:
    """The dry run as text for the terminal."""
    lines = [f"plan: {plan.total_runs} runs (nothing trained, nothing downloaded, no folder written)"]
    for (stage, method), count in plan.runs.items():
        lines.append(f"  {stage:4} {method:8} {count:4} runs")
    lines.append(f"model: {plan.model}  ({plan.shape_source})")
    if plan.shape is None:
        lines.append("memory: not estimated (unknown model size)")
    else:
        optim = config.optim
        lines.append(f"  {plan.shape.params() / 1e9:.2f}B parameters; weights {optim.model_dtype}, mixed precision "
                     f"{optim.mixed_precision}, activation checkpointing {'on' if optim.activation_checkpointing else 'off'}, "
                     f"micro-batch {optim.micro_batch_size} pairs × ≤ {config.limits.max_length} tokens")
        lines.append(f"memory per device (GiB), against {_gib(plan.device_memory)} GiB per device:")
        lines.append(f"  {'setting':10} {'devices':>7} {'weights':>9} {'grads':>9} {'optimizer':>9} {'activ.':>9} "
                     f"{'total':>9}  fits")
        for e in plan.estimates:
            fits = "yes" if e.total <= plan.device_memory else "no"
            lines.append(f"  {e.setting:10} {e.devices:>7} {_gib(e.weights):>9} {_gib(e.gradients):>9} "
                         f"{_gib(e.optimizer):>9} {_gib(e.activations):>9} {_gib(e.total):>9}  {fits}")
        lora = optim.lora or LoraConfig()
        lines.append(f"  lora: r={lora.r}, targets {lora.target_modules}, base {lora.quantize if lora.quantize != 'no' else optim.model_dtype}"
                     f"{'' if optim.lora else ' (not configured: posweep defaults shown)'}; "
                     f"{plan.shape.lora_params(lora) / 1e6:.1f}M adapter parameters")
        if not optim.activation_checkpointing:
            w = 4 if optim.model_dtype == "float32" else 2
            element = 2 if optim.mixed_precision != "no" else w
            saved = activation_bytes(plan.shape, 2 * optim.micro_batch_size, config.limits.max_length, element, True)
            lines.append(f"  with optim.activation_checkpointing: true, activations would be {_gib(saved)} GiB")
    if plan.pairs is None:
        lines.append("time: pairs per epoch unknown offline (hub dataset without train_data.limit); "
                     f"≤ {2 * config.limits.max_length:,} tokens per pair per epoch")
        if plan.tokens_per_second:
            lines.append(f"  ≤ {_duration(1000 * 2 * config.limits.max_length / plan.tokens_per_second)} per 1,000 "
                         f"pairs and epoch of a preference run at {plan.tokens_per_second:,.0f} tokens/s "
                         f"({plan.tokens_per_second_source})")
    else:
        lines.append(f"tokens: {plan.pairs:,} pairs per epoch; ≤ {plan.tokens_per_run['po']:,.0f} tokens per "
                     f"preference-run epoch, ≤ {plan.total_tokens:,.0f} for the whole plan (every row at max_length)")
        if plan.tokens_per_second:
            lines.append(f"time: ≤ {_duration(plan.total_tokens / plan.tokens_per_second)} of training at "
                         f"{plan.tokens_per_second:,.0f} tokens/s ({plan.tokens_per_second_source}), evaluation not included")
    if not plan.tokens_per_second:
        lines.append("  give --tokens-per-second (or --out of a sweep with finished runs) for a time estimate")
    return "\n".join(lines)

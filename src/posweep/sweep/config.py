"""The sweep configuration: a typed schema, the packaged presets, and the checks that run before any work.

In: a YAML file or a preset name (``demo``, ``paper``). Out: a validated ``SweepConfig``. Unknown keys,
unknown methods or hyperparameters, wrongly typed or repeated grid values and unknown judge specs fail
with ``SweepConfigError``, every problem named by its config key.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from posweep.config import DEFAULT_MODEL, DataLimits, OptimConfig, SamplingSpec, Strict, UserError
from posweep.data.layouts import PAIR_LAYOUTS, PROMPT_LAYOUTS
from posweep.judges.base import check_judge_spec
from posweep.losses import METHODS, MethodError, get_method

OPTIM_GRID_KEYS = ("learning_rate", "epochs")  # grid keys that set OptimConfig fields, shared by all stages


class SweepConfigError(UserError, ValueError):
    """A config that cannot run, or that conflicts with the sweep folder; the message names the keys."""


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]  # `beta: 0.1` is a one-point grid


GridValues = Annotated[list[float], BeforeValidator(_as_list), Field(min_length=1)]


class PairsSource(Strict):
    source: str = Field(description="file, datasets name[:split], or builtin:demo-train")
    layout: Literal[PAIR_LAYOUTS]
    limit: int | None = Field(None, gt=0, description="keep this many pairs (a seeded random subset)")


class PromptsSource(Strict):
    source: str = Field(description="file, datasets name[:split], or builtin:hh-rlhf-test")
    layout: Literal[PROMPT_LAYOUTS]
    limit: int | None = Field(None, gt=0, description="keep this many prompts (a seeded random subset)")
    meta: dict[str, str] = Field(default_factory=dict, exclude_if=lambda v: not v, description=(
        "fields given to every prompt whose row lacks them, e.g. {category: harmful} for the demo judge"))
    selection_fraction: float | None = Field(
        None, gt=0, lt=1, description="hold out this share of the prompts for every choice (SFT, best runs, "
        "recommendation) and report metrics on the rest; none: as the paper, choices and reports share prompts")


class SFTConfig(Strict):
    grid: dict[str, GridValues] = Field(default_factory=dict)  # learning_rate, epochs


class MethodConfig(Strict):
    grid: dict[str, GridValues] = Field(default_factory=dict)  # the method's hyperparameters, learning_rate, epochs


class ExecutorConfig(Strict):
    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="Ray cluster address (e.g. auto); none starts a local Ray")
    num_cpus: float = Field(1, gt=0, description="CPUs each Ray task requests")
    max_retries: int = Field(2, ge=0, description="Ray retries of a task whose worker died")
    processes_per_run: int = Field(1, ge=1, description="devices (processes) per run: > 1 runs each with torchrun, "
                                   "data-parallel, or sharded with optim.fsdp")
    cpu_workers: int = Field(1, ge=1, exclude_if=lambda v: v == 1, description=(
        "local, no CUDA device: run this many runs at once in worker processes that share the cores "
        "(CPU sampling is latency-bound, so two one-thread workers beat one two-thread process)"))


class SweepConfig(Strict):
    model: str = DEFAULT_MODEL
    train_data: PairsSource
    test_prompts: PromptsSource
    system_prompt: str | None = Field(None, exclude_if=lambda v: v is None, description=(
        "a system turn put before every training and test prompt that has none (the chat template's default "
        "otherwise)"))
    judge: str = "demo"
    sampling: SamplingSpec = SamplingSpec()
    limits: DataLimits = DataLimits()
    optim: OptimConfig = OptimConfig()  # base; the grids override learning_rate / epochs, seeds the seed
    sft: SFTConfig | None = SFTConfig()  # null: the model is already the SFT policy
    # learning_rate / epochs for every method (a method's own grid may override them)
    shared_grid: dict[str, GridValues] = Field(default_factory=dict)
    methods: dict[str, MethodConfig] = Field(default_factory=dict)
    seeds: list[int] = Field([0], min_length=1)
    executor: ExecutorConfig = ExecutorConfig()
    keep_checkpoints: bool = False  # false: delete a preference run's checkpoint once it is evaluated

    @field_validator("judge")
    @classmethod
    def _known_judge(cls, spec: str) -> str:
        check_judge_spec(spec)
        return spec

    @model_validator(mode="after")
    def _check_grids(self) -> SweepConfig:
        problems = grid_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def grid_problems(config: SweepConfig) -> list[str]:
    """Every unknown method, unknown grid key, bad or repeated value, each named by its config key."""
    problems = []
    grids = {"shared_grid": config.shared_grid}
    if config.sft is not None:
        grids["sft.grid"] = config.sft.grid
    for name, method_config in config.methods.items():
        if name not in METHODS and "+" not in name:
            problems.append(f"methods.{name}: unknown method (known: {', '.join(METHODS)}, or a+b combinations)")
            continue
        try:  # a combination of registry methods such as dpo+nll (docs/DESIGN.md section 8)
            get_method(name)
        except MethodError as error:
            problems.append(f"methods.{name}: {error}")
            continue
        grids[f"methods.{name}.grid"] = method_config.grid
    for where, grid in grids.items():
        method = get_method(where.split(".")[1]) if where.startswith("methods.") else None
        known = [*(method.hyperparameters if method else []), *OPTIM_GRID_KEYS]
        for key, values in grid.items():
            if key not in known:
                what = f"hyperparameter for {method.name}" if method else f"key for {where}"
                problems.append(f"{where}.{key}: unknown {what} (known: {', '.join(known)})")
                continue
            if method is not None:
                problems += [f"{where}.{key}: {p}" for v in values if (p := method.check_value(key, v))]
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                problems.append(f"{where}.{key}: repeated values {repeated}")
            if key in OPTIM_GRID_KEYS and min(values) <= 0:
                problems.append(f"{where}.{key}: values must be > 0, got {values}")
    if len(set(config.seeds)) != len(config.seeds):
        problems.append(f"seeds: repeated values in {config.seeds}")
    return problems


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"].removeprefix("Value error, ")
        lines.extend(message.splitlines() if not where else [f"{where}: {message}"])
    if len(lines) == 1:
        return f"{source}: invalid sweep config: {lines[0]}"
    return f"{source}: invalid sweep config\n  " + "\n  ".join(lines)


def _presets_dir():
    return resources.files("posweep") / "presets"


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in _presets_dir().iterdir() if p.name.endswith(".yaml"))


def load_config(path_or_preset: str | Path) -> SweepConfig:
    """A validated config from a YAML file or a packaged preset name (``demo``, ``paper``)."""
    path = Path(path_or_preset).expanduser()
    if path.is_file():
        text, source = path.read_text(encoding="utf-8"), str(path)
    elif str(path_or_preset) in preset_names():
        source = f"preset {path_or_preset}"
        text = (_presets_dir() / f"{path_or_preset}.yaml").read_text(encoding="utf-8")
    else:
        raise SweepConfigError(f"{path_or_preset}: no such file, and not a preset ({', '.join(preset_names())})")
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise SweepConfigError(f"{source}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise SweepConfigError(f"{source}: expected a mapping of config keys, got {type(values).__name__}")
    return validate_config(values, source)


def validate_config(values: dict, source: str = "config") -> SweepConfig:
    try:
        return SweepConfig.model_validate(values)
    except ValidationError as error:
        raise SweepConfigError(_format_validation_error(error, source)) from None


def config_to_yaml(config: SweepConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def quick_config(config: SweepConfig) -> SweepConfig:
    """The first value of every grid key and the first seed: one setting per method (``demo --quick``).

    Its runs are a subset of the full config's, so a later full sweep in the same folder reuses them.
    """
    def first(grid: dict[str, list[float]]) -> dict[str, list[float]]:
        return {key: values[:1] for key, values in grid.items()}

    return config.model_copy(update={
        "sft": config.sft.model_copy(update={"grid": first(config.sft.grid)}) if config.sft else None,
        "shared_grid": first(config.shared_grid),
        "methods": {name: m.model_copy(update={"grid": first(m.grid)}) for name, m in config.methods.items()},
        "seeds": config.seeds[:1],
    })

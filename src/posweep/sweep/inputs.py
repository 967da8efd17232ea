"""What the runs of a sweep share, loaded once per process: data, prompts, judge, baselines, reference.

In: a ``SweepConfig``. Out: a ``SharedInputs`` whose parts load on first use and stay loaded for every run
the process executes (the driver, a device worker, a Ray worker): the tokenized training pairs, the test
prompts and their selection split, the judge, and per base policy (the model for SFT runs, the chosen SFT
checkpoint for preference runs) the loaded model every run's KL is measured against, its baseline samples
and its reference log-probs. Each part except the loaded models is also cached on disk by its inputs, so a
second process or a resumed sweep reads instead of recomputing (docs/DESIGN.md section 5).

Stages are imported inside the methods: the sweep's tests replace them with fakes, and a worker loads
only what its runs need.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from posweep.config import stable_hash
from posweep.data.demo_sources import resolve_source
from posweep.sweep.config import SweepConfig, SweepConfigError
from posweep.sweep.plan import sweep_context


def subset(items: list, limit: int | None) -> list:
    """A seeded random subset of ``limit`` items in their original order (data files are often sorted
    by category, so the first N would not be representative)."""
    if limit is None or limit >= len(items):
        return items
    keep = sorted(random.Random(0).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def load_train_pairs(config: SweepConfig):
    """The training pairs, tokenized with the model's tokenizer (``prepare_pairs`` caches them)."""
    from posweep.data import load_pairs, prepare_pairs, with_system_turn
    from posweep.models import load_tokenizer

    source = resolve_source(config.train_data.source)
    pairs, summary = load_pairs(source, config.train_data.layout)
    for pair in pairs:
        pair.prompt = with_system_turn(pair.prompt, config.system_prompt)
    kept = subset(pairs, config.train_data.limit)
    if len(kept) < len(pairs):
        summary.drop("over_limit", len(pairs) - len(kept))
        summary.rows_kept = len(kept)
    if not kept:
        raise SweepConfigError(f"train_data: {config.train_data.source} has no usable pairs ({summary.to_dict()})")
    return prepare_pairs(source, load_tokenizer(config.model), config.limits, pairs=kept, summary=summary)


def load_test_prompts(config: SweepConfig) -> list:
    from posweep.data import load_prompts, with_system_turn

    source = resolve_source(config.test_prompts.source)
    prompts, _ = load_prompts(source, config.test_prompts.layout)
    prompts = subset(prompts, config.test_prompts.limit)
    for item in prompts:
        item.prompt = with_system_turn(item.prompt, config.system_prompt)
        item.meta = {**config.test_prompts.meta, **item.meta}
    if not prompts:
        raise SweepConfigError(f"test_prompts: {config.test_prompts.source} has no usable prompts")
    return prompts


def selection_split(prompt_ids: list[str], fraction: float | None, seed: int = 0) -> set[str]:
    """The selection prompts (``test_prompts.selection_fraction``): ``round(fraction · n)`` ids, at least one
    and at most n − 1, ranked by a seeded hash of each id, so the same prompts are chosen whatever order the
    file lists them in. Empty without a split (the paper: choices and reports share every prompt)."""
    if not fraction or len(prompt_ids) < 2:
        return set()
    count = min(max(round(fraction * len(prompt_ids)), 1), len(prompt_ids) - 1)
    ranked = sorted(prompt_ids, key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest())
    return set(ranked[:count])


class SharedInputs:
    """The shared inputs of one sweep in one process (see the module docstring)."""

    def __init__(self, config: SweepConfig):
        self.config = config
        self.context = stable_hash(sweep_context(config))
        self._pairs: Any = None  # TokenizedPairs
        self._prompts: list | None = None  # list[PromptItem]
        self._judge: Any = None  # judges.Judge
        self._selection: set[str] | None = None
        self._baselines: dict[str, Any] = {}  # base spec -> evaluation.Baseline
        self._references: dict[str, Any] = {}  # base spec -> training.ReferenceLogps
        self._sft_model: tuple[str, Any, Any] | None = None  # (base spec, model, tokenizer), one at a time

    @property
    def pairs(self):
        if self._pairs is None:
            self._pairs = load_train_pairs(self.config)
        return self._pairs

    @property
    def prompts(self) -> list:
        if self._prompts is None:
            self._prompts = load_test_prompts(self.config)
        return self._prompts

    @property
    def selection(self) -> set[str]:
        """The ids of the selection prompts (``selection_split``); empty without a split."""
        if self._selection is None:
            self._selection = selection_split([item.prompt_id for item in self.prompts],
                                              self.config.test_prompts.selection_fraction)
        return self._selection

    @property
    def judge(self):
        if self._judge is None:
            from posweep.judges import load_judge

            self._judge = load_judge(self.config.judge)
        return self._judge

    def sft_model(self, base_spec: str) -> tuple:
        """``(model, tokenizer)`` of the base policy every run's KL is measured against, loaded once per
        process in the evaluation dtype (bf16 on GPU) and moved to the device for each evaluation. Between
        evaluations ``park`` moves it to CPU memory, so training gets the GPU's memory back; moving it
        costs far less than loading it from disk again for every run."""
        from posweep.models import default_device, load_policy, resolve_dtype

        device = default_device()
        if self._sft_model is None or self._sft_model[0] != base_spec:
            self._sft_model = None  # one base policy at a time: the SFT stage's, then the chosen SFT
            model, tokenizer = load_policy(base_spec, dtype=resolve_dtype("auto", device), device="cpu")
            self._sft_model = (base_spec, model, tokenizer)
        _, model, tokenizer = self._sft_model
        return model.to(device), tokenizer

    def park(self) -> None:
        """Move the loaded SFT model to CPU memory (a no-op on CPU machines)."""
        if self._sft_model is not None and self._sft_model[1].device.type != "cpu":
            import torch

            self._sft_model[1].to("cpu")
            torch.cuda.empty_cache()

    def baseline(self, base_spec: str):
        """The base policy's samples and scores, and the chosen responses' scores (cached on disk)."""
        if base_spec not in self._baselines:
            from posweep.evaluation import get_baseline

            self._baselines[base_spec] = get_baseline(base_spec, self.prompts, self.judge, self.config.sampling,
                                                      sft_model=lambda: self.sft_model(base_spec), progress=False)
        return self._baselines[base_spec]

    def adopt_baseline(self, base_spec: str, run_dir) -> bool:
        """Make the evaluation of the SFT run that produced ``base_spec`` (its samples, token ids and scores)
        the baseline of ``base_spec``, cached for every process; False when that run's table cannot serve
        (then ``baseline`` samples the model as usual)."""
        from posweep.evaluation import baseline_from_run

        baseline = baseline_from_run(base_spec, run_dir, self.prompts, self.judge, self.config.sampling)
        if baseline is not None:
            self._baselines[base_spec] = baseline
        return baseline is not None

    def reference_logps(self, base_spec: str):
        """The base policy's log-probs of every training pair (cached on disk)."""
        if base_spec not in self._references:
            from posweep.training import get_reference_logps

            self._references[base_spec] = get_reference_logps(
                base_spec, self.pairs, progress=False, mixed_precision=self.config.optim.mixed_precision,
                packing=self.config.optim.packing, model_dtype=self.config.optim.model_dtype)
        return self._references[base_spec]


_this_process: SharedInputs | None = None  # the shared inputs of the sweep this process works on


def process_inputs(config: SweepConfig) -> SharedInputs:
    """This process's ``SharedInputs`` for ``config``'s sweep; a different sweep gets fresh ones."""
    global _this_process
    context = stable_hash(sweep_context(config))
    if _this_process is None or _this_process.context != context:
        _this_process = SharedInputs(config)
    return _this_process


def forget_process_inputs() -> None:
    """Drop this process's shared inputs (a new sweep in the same process loads everything afresh)."""
    global _this_process
    _this_process = None

"""Training: SFT and preference optimisation on accelerate, and the shared reference log-probs.

In: a model spec, ``TokenizedPairs``, a method + hyperparameters, an ``OptimConfig``. Out: a checkpoint
folder, ``config.json`` and ``train_log.jsonl`` (``TrainResult``); ``ReferenceLogps`` cached per sweep.

- ``logprobs``: summed response log-probs without full-vocabulary logits; pairs → rows.
- ``reference``: the reference log-prob cache.
- ``trainer``: the loop (one process, or each rank's share under torchrun).
- ``distributed``: how a step splits over processes, the collectives, FSDP2 sharding.
- ``lora``: peft adapters (LoRA / QLoRA) and their checkpoints.
- ``trackers``: TensorBoard / W&B / MLflow through accelerate.
- ``job``: one job from the command line or a YAML file.
"""

from posweep.training.job import TrainJob, run_train_job
from posweep.training.reference import ReferenceLogps, get_reference_logps, reference_cache_path
from posweep.training.trainer import TrainResult, train, train_preference, train_sft, training_order

__all__ = ["ReferenceLogps", "TrainJob", "TrainResult", "get_reference_logps", "reference_cache_path",
           "run_train_job", "train", "train_preference", "train_sft", "training_order"]

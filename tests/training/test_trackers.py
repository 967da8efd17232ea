"""report_to: tensorboard writes one tracker run per posweep run, named by the run id, with the config and
the train_log numbers, read back from the event files offline; a tracker that is not installed is refused."""

from __future__ import annotations

import pytest

from posweep.config import DataLimits, OptimConfig, UserError
from posweep.data import prepare_pairs
from posweep.training import train_preference
from posweep.training.trackers import check_trackers, flat_config
from tests.training.test_trainer import make_pairs, read_log


@pytest.fixture(scope="module")
def tokenized(tokenizer):
    return prepare_pairs("test-pairs", tokenizer, DataLimits(max_prompt_length=64, max_length=96), pairs=make_pairs())


def test_tensorboard_events_hold_the_logged_steps(tiny_model_dir, tokenized, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    optim = OptimConfig(learning_rate=1e-3, max_steps=2, batch_size=4, micro_batch_size=4, warmup_ratio=0.0,
                        report_to=["tensorboard"])
    run_dir = tmp_path / "simpo-0123456789"
    result = train_preference(str(tiny_model_dir), tokenized, "simpo", {"beta": 2.0}, optim, run_dir, progress=False,
                              device="cpu")
    assert result.status == "done"
    event_dir = run_dir / "tensorboard" / "simpo-0123456789"  # one tracker run, named by the run id
    events = EventAccumulator(str(event_dir))
    events.Reload()
    log = read_log(run_dir)
    logged = events.Scalars("loss")
    assert [e.step for e in logged] == [1, 2]
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in log], rel=1e-6)
    assert [e.value for e in events.Scalars("tokens")] == [r["tokens"] for r in log]
    hparams = next(event_dir.glob("*/hparams.yml")).read_text()  # the run's config, as hyperparameters
    assert "optim.learning_rate: 0.001" in hparams and "method: simpo" in hparams


def test_missing_tracker_package_is_refused_and_config_is_flattened():
    import importlib.util

    for name in ("wandb", "mlflow"):
        if importlib.util.find_spec(name) is None:
            with pytest.raises(UserError, match=f"{name} not installed"):
                check_trackers([name])
    assert flat_config({"optim": {"lr": 1.0, "lora": None}, "grid": [1, 2]}) == \
        {"optim.lr": 1.0, "optim.lora": "null", "grid": "[1, 2]"}

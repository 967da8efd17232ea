"""User errors end a command with one line naming the thing, exit code 1 and no traceback."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml
from typer.testing import CliRunner

from posweep.cli import app

runner = CliRunner()


def run(*args) -> tuple[int, str]:
    """Exit code and output; an exception that escaped the command (a traceback for a user) fails the test."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{type(result.exception).__name__} escaped: {result.exception}"
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def one_line_error(args, *expected: str) -> str:
    code, output = run(*args)
    assert code == 1, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    for text in expected:
        assert text in lines[0], (text, output)
    return lines[0]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}) + "\n")
    return path


def test_model_path_that_does_not_exist(tmp_path, pairs_file):
    missing = tmp_path / "no" / "such" / "model"
    one_line_error(["sft", "--model", missing, "--data", pairs_file, "--out", tmp_path / "out"],
                   str(missing), "no such model folder")


def test_hub_id_that_cannot_be_loaded(tmp_path, pairs_file, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one_line_error(["sft", "--model", "nobody/no-such-model", "--data", pairs_file, "--out", tmp_path / "out"],
                   "'nobody/no-such-model'", "Hugging Face hub")


def test_unknown_judge_spec_in_a_sweep_config(tmp_path, tiny_model_dir, pairs_file):
    config = {"model": str(tiny_model_dir), "judge": "gpt4-as-a-judge",
              "train_data": {"source": str(pairs_file), "layout": "pairs"},
              "test_prompts": {"source": str(pairs_file), "layout": "prompts"}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    one_line_error(["sweep", path, "--out", tmp_path / "sweep"], "judge", "'gpt4-as-a-judge'", "hf:PATH_OR_ID")
    assert not (tmp_path / "sweep").exists()  # nothing started


def test_unknown_judge_spec_for_evaluate(tmp_path, tiny_model_dir, pairs_file):
    one_line_error(["evaluate", "--model", tiny_model_dir, "--sft", tiny_model_dir, "--prompts", pairs_file,
                    "--judge", "gold", "--out", tmp_path / "eval"], "unknown judge spec 'gold'")


def test_unknown_sampling_backend_for_evaluate(tmp_path, tiny_model_dir, pairs_file):
    one_line_error(["evaluate", "--model", tiny_model_dir, "--sft", tiny_model_dir, "--prompts", pairs_file,
                    "--judge", "demo", "--backend", "tgi", "--out", tmp_path / "eval"],
                   "unknown sampling backend 'tgi'", "hf-compiled")


@pytest.mark.parametrize("content", ["garbage", "foreign"])
def test_state_sqlite_that_is_not_a_sweeps(tmp_path, content):
    out = tmp_path / "sweep"
    out.mkdir()
    state = out / "state.sqlite"
    if content == "garbage":
        state.write_bytes(b"this is not a database at all" * 100)
    else:  # a real SQLite database of some other tool
        with sqlite3.connect(state) as connection:
            connection.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    line = one_line_error(["sweep", "demo", "--out", out], str(state), "another tool or the file is damaged")
    assert "not a posweep sweep state" in line


def test_missing_data_file(tmp_path):
    missing = tmp_path / "pairs.jsonl"
    one_line_error(["data", "inspect", missing], str(missing), "no such file")


def test_unknown_layout(pairs_file, tiny_model_dir):
    one_line_error(["data", "inspect", pairs_file, "--layout", "alpaca", "--model", tiny_model_dir],
                   "unknown layout 'alpaca'", "pku-saferlhf")


def test_train_without_a_method_lists_the_methods(tmp_path, pairs_file):
    line = one_line_error(["train", "--data", pairs_file, "--out", tmp_path / "out"], "--method", "posweep sft")
    for method in ("dpo", "ln_dpo", "simpo"):
        assert method in line
    assert not (tmp_path / "out").exists()


def test_train_with_an_unknown_method(tmp_path, pairs_file):
    one_line_error(["train", "--method", "kto", "--data", pairs_file, "--out", tmp_path / "out"],
                   "unknown method 'kto'")


@pytest.mark.parametrize("args, expected", [
    (["--method", "ld_dpo", "--hparam", "ld_alpha=1.5"], "'ld_alpha' must be >= 0 and <= 1, got 1.5"),
    (["--method", "dpo+nll", "--hparam", "nll_weight=0.2", "--hparam", "tau=1"],
     "method 'dpo+nll': unknown hyperparameter 'tau'; allowed: beta, dpo_weight, nll_weight"),
    (["--method", "dpo", "--hparam", "beta"], "--hparam 'beta': expected NAME=NUMBER"),
    (["--method", "dpo", "--hparam", "beta=high"], "--hparam 'beta=high': expected NAME=NUMBER"),
    (["--method", "dpo", "--hparam", "beta=2", "--beta", "-1"], "'beta' must be > 0, got -1"),  # --beta wins
])
def test_train_hparams_reach_the_method_checks(tmp_path, pairs_file, args, expected):
    """--hparam NAME=VALUE sets any method's hyperparameter; bad names and values fail before any work."""
    one_line_error(["train", *args, "--data", pairs_file, "--out", tmp_path / "out"], expected)
    assert not (tmp_path / "out").exists()

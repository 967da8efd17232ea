"""`posweep --help` and `posweep data inspect` (JSONL pairs, PKU-SafeRLHF, HH-RLHF, malformed input)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posweep.cli import app

FIXTURES = Path(__file__).parents[1] / "fixtures"
runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("POSWEEP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def inspect(path, model_dir, *options) -> dict:
    result = runner.invoke(app, ["data", "inspect", str(path), "--model", str(model_dir), "--json", *options])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_help_lists_the_commands():
    executable = Path(sys.executable).with_name("posweep")
    help_text = subprocess.run([str(executable), "--help"], capture_output=True, text=True, check=True).stdout
    assert "data" in help_text
    result = runner.invoke(app, ["data", "--help"])
    assert result.exit_code == 0 and "inspect" in result.output


def test_inspect_jsonl_pairs_prints_and_stores_the_summary(tmp_path, tiny_model_dir, isolated_cache):
    rows = [{"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."},
            {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Blue."},
            {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = inspect(path, tiny_model_dir)
    assert report["layout"] == "pairs" and report["rows_read"] == 3 and report["rows_kept"] == 2
    assert report["dropped"] == {"chosen_equals_rejected": 1}
    assert report["lengths"]["chosen"]["min"] >= 2  # at least one text token and the eos
    stored = Path(report["cache"])
    assert stored.parent.parent == isolated_cache / "data" and (stored.parent / "pairs.parquet").exists()
    saved = json.loads(stored.read_text())
    assert saved == {k: v for k, v in report.items() if k not in {"cache", "layout"}}

    table = runner.invoke(app, ["data", "inspect", str(path), "--model", str(tiny_model_dir)])
    assert table.exit_code == 0
    text = " ".join(table.output.split())
    assert "rows read │ 3" in text and "dropped: chosen_equals_rejected │ 1" in text and "summary stored at" in text


def test_inspect_pku_saferlhf_fixture(tiny_model_dir):
    report = inspect(FIXTURES / "pku_saferlhf.jsonl", tiny_model_dir)
    assert report["layout"] == "pku-saferlhf" and report["rows_read"] == 8 and report["rows_kept"] == 3
    assert report["dropped"] == {"dual_safe": 1, "dual_unsafe": 1, "safer_response_id_disagrees": 1,
                                 "chosen_equals_rejected": 1, "empty_response": 1}
    assert Path(report["cache"]).exists()


def test_inspect_hh_rlhf_fixture_and_limits(tiny_model_dir):
    report = inspect(FIXTURES / "hh_rlhf.jsonl", tiny_model_dir)
    assert report["layout"] == "hh-rlhf" and report["rows_kept"] == 3 and report["with_chosen_response"] == 3
    assert report["dropped"] == {"no_assistant_turn": 1, "malformed_transcript": 2}
    truncated = inspect(FIXTURES / "pku_saferlhf.jsonl", tiny_model_dir, "--max-prompt-length", "8", "--max-length", "16")
    assert truncated["truncated"]["prompt"] == 3 and truncated["lengths"]["prompt"]["max"] == 8
    assert truncated["lengths"]["chosen"]["max"] == 8


def test_inspect_rejects_a_malformed_file_naming_the_line(tmp_path, tiny_model_dir):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    result = runner.invoke(app, ["data", "inspect", str(path), "--model", str(tiny_model_dir)])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "error:" in text and "broken.jsonl" in text and "line 2" in text
    result = runner.invoke(app, ["data", "inspect", str(tmp_path / "missing.jsonl"), "--model", str(tiny_model_dir)])
    assert result.exit_code == 1 and "no such file" in " ".join(result.output.split())

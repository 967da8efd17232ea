"""posweep.sweep.state: the folder lock, and folders that are not a sweep's."""

from __future__ import annotations

import pytest

from posweep.sweep import (
    SweepError,
    sweep_lock,
)
from tests.sweep.helpers import sweep


def test_folder_in_use_or_not_a_sweep_is_refused(tmp_path, fakes, micro_config):
    (tmp_path / "busy").mkdir()
    with sweep_lock(tmp_path / "busy"), pytest.raises(SweepError, match="in use by another posweep sweep"):
        sweep(micro_config, tmp_path / "busy")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SweepError, match="not a sweep folder"):
        sweep(micro_config, tmp_path / "other")

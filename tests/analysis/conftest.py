from __future__ import annotations

import pytest

from posweep.analysis import load_sweep
from tests.analysis.sweep_files import COLLAPSED_RESPONSES, write_sweep


@pytest.fixture
def sweep(tmp_path):
    return load_sweep(write_sweep(tmp_path / "sweep", responses={"dpo-4": COLLAPSED_RESPONSES}))

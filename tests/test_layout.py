"""The package's layout contracts: imports flow one way (no module imports a later stage), modules stay
small, and the code cites only the design document the repository ships."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "posweep"

# The stages of the data flow, earliest first (docs/DESIGN.md section 1). Modules at one level may import
# each other; a module may import any earlier level, never a later one.
STAGES = [
    {"config", "io", "metrics", "text", "packages", "progress"},
    {"models"},
    {"data"},
    {"losses"},
    {"training"},
    {"generation"},
    {"judges"},
    {"evaluation"},
    {"demo_build"},
    {"sweep"},
    {"analysis"},
    {"report"},
    {"workflow"},
    {"cli"},
]
LEVEL = {name: level for level, names in enumerate(STAGES) for name in names}
MAX_LINES = 460  # "about 450": one concept per file


def modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def stage_of(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def posweep_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, first component after posweep) of every import of posweep, wherever it is in the module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "posweep":
            parts = node.module.split(".")
            if len(parts) > 1:
                found.append((node.lineno, parts[1]))
            else:  # from posweep import io, analysis
                found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[1]) for alias in node.names
                      if alias.name.startswith("posweep.")]
    return found


def test_every_top_level_module_has_a_stage():
    unknown = sorted({stage_of(p) for p in modules()} - set(LEVEL) - {"__init__"})
    assert not unknown, f"give these a stage in STAGES: {unknown}"


def test_no_module_imports_a_later_stage():
    problems = []
    for path in modules():
        stage = stage_of(path)
        if stage == "__init__":
            continue
        for line, target in posweep_imports(ast.parse(path.read_text())):
            if target in LEVEL and LEVEL[target] > LEVEL[stage]:
                problems.append(f"{path.relative_to(SRC)}:{line} ({stage}) imports {target}, a later stage")
    assert not problems, "\n".join(problems)


def test_modules_stay_small():
    long = {str(p.relative_to(SRC)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_packages_say_what_goes_in_and_comes_out():
    for init in SRC.rglob("__init__.py"):
        docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "In:" in docstring and "Out:" in docstring, f"{init.relative_to(SRC)}: say what goes in and out"


def test_design_citations_point_inside_the_repository():
    assert (SRC.parents[1] / "docs" / "DESIGN.md").exists()
    for path in list(SRC.rglob("*.py")) + list(SRC.rglob("*.yaml")):
        text = path.read_text()
        for line_number, line in enumerate(text.splitlines(), start=1):
            if "DESIGN.md" in line:
                assert "docs/DESIGN.md" in line, f"{path.relative_to(SRC)}:{line_number} cites {line.strip()!r}"


@pytest.mark.parametrize("module", ["posweep.losses", "posweep.metrics",
                                    "posweep.text", "posweep.io", "posweep.config"])
def test_torch_free_modules(module):
    """The registry, the analyses and the shared rules load without torch (configs validate in a blink)."""
    import subprocess
    import sys

    code = f"import sys, {module}; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]"
    subprocess.run([sys.executable, "-c", code], check=True)

"""The report folder: files written, HTML self-contained with every section, and (with Chromium) the page
renders with every section and figure visible."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from posweep.report import write_report
from tests.analysis.sweep_files import COLLAPSED_RESPONSES, RUNS, write_sweep

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SECTION_IDS = ["recommendation", "t1-best-runs", "f1-score-distribution", "t3-head-to-head", "f2-length", "f3-kl",
               "f9-ln-kl", "f4-f7-sensitivity", "f8-kl-vs-score", "expected-max", "seed-intervals", "collapse",
               "missing"]
CSV_NAMES = ["t1_best_runs", "f1_score_distribution", "t3_head_to_head_best", "t3_head_to_head_p75", "f2_length",
             "f3_kl", "f9_ln_kl", "f4_f7_sensitivity", "f8_kl_vs_score", "expected_max", "seed_intervals",
             "collapse_flags", "neighbourhoods"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = write_sweep(tmp_path_factory.mktemp("report") / "sweep", responses={"dpo-4": COLLAPSED_RESPONSES})
    return write_report(root)


def test_report_files_exist(report):
    out = report.parent
    assert report == out / "index.html" and report.exists()
    assert (out / "summary.md").exists()
    for name in CSV_NAMES:
        assert (out / f"{name}.csv").exists(), name
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "f1_score_distribution.png" in pngs and "sensitivity_dpo_beta.png" in pngs
    assert all((out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    best = pd.read_csv(out / "t1_best_runs.csv").set_index("method")
    assert best.loc["simpo", "run_id"] == "simpo-1"
    summary = (out / "summary.md").read_text()
    assert "## Recommendation" in summary and "| method |" in summary and "Demo judge" in summary


def test_html_is_self_contained_with_every_section(report):
    page = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    for section_id in SECTION_IDS:
        assert f'<section id="{section_id}">' in page, section_id
    figure_count = len(list((report.parent / "figures").glob("*.png")))
    assert page.count('src="data:image/png;base64,') == figure_count
    assert 'id="stand-in-banner"' in page and "stand-in for a neural reward model" in page
    assert "dpo-5" in page  # the failed run is named under "what is missing"


def test_no_banner_for_a_real_judge_and_partial_sweeps_render(tmp_path):
    runs = [run for run in RUNS if run[1] in ("sft", "simpo")] + [RUNS[6]]  # one method, one failed dpo run
    page = write_report(write_sweep(tmp_path / "partial", runs, judge_is_stand_in=False)).read_text()
    assert "stand-in-banner" not in page
    missing = page.split('<section id="missing">')[1]
    assert "dpo-5" in missing and "no DPO run finished" in missing


def test_cli_report_prints_index_and_recommendation(report):
    from typer.testing import CliRunner

    from posweep.cli import app

    result = CliRunner().invoke(app, ["report", str(report.parents[1])])
    assert result.exit_code == 0, result.output
    assert "index.html" in result.output and "recommended:" in result.output and "simpo" in result.output
    missing = CliRunner().invoke(app, ["report", str(report.parents[1] / "nowhere")])
    assert missing.exit_code == 1 and "summary.csv" in missing.output


def test_report_renders_in_headless_chromium(report):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium missing: install Debian packages chromium and chromium-driver "
                    "(make test does this as root)")
    from playwright.sync_api import sync_playwright

    screenshot = REPO / "test-artifacts" / "report.png"
    screenshot.parent.mkdir(exist_ok=True)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            for section_id in SECTION_IDS:
                assert page.locator(f"section#{section_id}").is_visible(), section_id
            images = page.locator("figure img")
            assert images.count() == len(list((report.parent / "figures").glob("*.png")))
            for i in range(images.count()):
                image = images.nth(i)
                image.scroll_into_view_if_needed()
                assert image.is_visible(), image.get_attribute("id")
                assert image.evaluate("img => img.complete && img.naturalWidth") > 0, image.get_attribute("id")
            assert all(url.startswith(("file:", "data:")) for url in requests), requests
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000

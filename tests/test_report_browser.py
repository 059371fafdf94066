"""The arena's report.html in a real browser (headless Chromium; skipped without it): no table
overflows the page and every figure loads, at a desktop and a narrow window width; and the check
itself finds a broken image and an overflowing table when there are some."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from test_arena_claims import _store

from grouprl.arena.report import write_report

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "report_in_browser.py"
_spec = importlib.util.spec_from_file_location("report_in_browser", _SCRIPT)
browser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser)

pytestmark = pytest.mark.skipif(browser.chromium() is None, reason="no chromium binary (apt-get install chromium)")


def test_arena_report_renders_without_overflow_or_broken_images(tmp_path):
    paths = write_report(_store(tmp_path), tmp_path / "report")
    md = paths["markdown"].read_text()
    plain = md[md.index("Not significant (Holm-adjusted p ≥ 0.05): "):].split("\n")[0]  # said plainly, in words
    assert "`copo` vs `grpo` on `mixed` (diff " in plain
    assert "![learning curves on mixed](figures/curves_mixed.png)" in md
    for width in (1280, 800):
        result = browser.layout(paths["html"], width)
        assert result["n_tables"] >= 5 and result["n_images"] >= 3, result  # the check saw the report
        assert browser.problems(result) == [], (width, result)


def test_the_check_finds_a_broken_image_and_an_overflowing_table(tmp_path):
    paths = write_report(_store(tmp_path), tmp_path / "report")
    page = paths["html"]
    wide = "<table><tr>" + "".join(f"<td style='white-space:nowrap'>{'x' * 40}</td>" for _ in range(12)) + "</tr></table>"
    page.write_text(page.read_text().replace("</body>", wide + "</body>"))
    shutil.move(tmp_path / "report" / "figures" / "curves_mixed.png", tmp_path / "moved.png")
    found = browser.problems(browser.layout(page, 1280))
    assert any("figures/curves_mixed.png is broken" in p for p in found), found
    assert any(p.startswith("table 'xxxx") for p in found), found

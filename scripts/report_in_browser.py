"""Render a report.html in headless Chromium: check its layout, optionally save a screenshot.

    python scripts/report_in_browser.py RUN/report/report.html [--width 1280 --width 800]
    python scripts/report_in_browser.py RUN/report/report.html --screenshot docs/images/arena_report.png

The check loads a copy of the page with a small script that runs after every image has loaded (or
failed) and reports: the page's scrollWidth against its clientWidth (horizontal overflow), each table
whose box reaches past the body's, and each image that did not decode (``naturalWidth == 0``). Exit
status 1 when any is found. Needs the ``chromium`` binary (Debian: ``apt-get install chromium``);
``tests/test_report_browser.py`` runs it and is skipped without it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

_CHECK = """<script>
window.addEventListener('load', () => {
  const body = document.body.getBoundingClientRect();
  const out = {scroll_width: document.documentElement.scrollWidth, client_width: document.documentElement.clientWidth,
               n_tables: document.querySelectorAll('table').length, n_images: document.images.length,
               tables: [], images: []};
  for (const t of document.querySelectorAll('table')) {
    const r = t.getBoundingClientRect();
    if (r.right > body.right + 0.5 || r.left < body.left - 0.5)
      out.tables.push({head: t.rows[0].innerText.slice(0, 80), left: r.left, right: r.right, body_right: body.right});
  }
  for (const i of document.images) if (!i.complete || i.naturalWidth === 0) out.images.push(i.getAttribute('src'));
  const pre = document.createElement('pre');
  pre.id = 'layout-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
    """The headless browser's binary (chromium, chromium-browser or google-chrome), or None."""
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _run(args: list[str], timeout: float) -> str:
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary on PATH (Debian: apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    done = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def layout(page: str | Path, width: int = 1280, timeout: float = 120) -> dict:
    """The layout check of ``page`` at a window ``width`` px wide (see the module docstring)."""
    page = Path(page).resolve()
    probe = page.with_name(f".{page.stem}.layout-check.html")  # beside it: relative image paths resolve
    probe.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    try:
        dom = _run([f"--window-size={width},1000", "--dump-dom", probe.as_uri()], timeout)
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r'<pre id="layout-check">(.*?)</pre>', dom, re.DOTALL)
    if m is None:
        raise RuntimeError(f"{page}: the layout check did not run (no result in the rendered DOM)")
    return json.loads(m.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def problems(result: dict) -> list[str]:
    """Plain descriptions of what ``layout`` found wrong (empty when nothing)."""
    out = []
    if result["scroll_width"] > result["client_width"]:
        out.append(f"the page scrolls sideways ({result['scroll_width']} > {result['client_width']} px)")
    out += [f"table '{t['head']}' overflows the text column (right edge {t['right']:.0f} > {t['body_right']:.0f} px)"
            for t in result["tables"]]
    out += [f"image {src} is broken" for src in result["images"]]
    return out


def screenshot(page: str | Path, out: str | Path, width: int = 1100, height: int = 2200, timeout: float = 120) -> Path:
    """A PNG of the top ``height`` px of ``page`` rendered ``width`` px wide."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--window-size={width},{height}", f"--screenshot={out}", Path(page).resolve().as_uri()], timeout)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("--width", type=int, action="append", help="window widths to check (default 1280 and 800)")
    ap.add_argument("--screenshot", type=Path, help="also save a PNG of the page's top here")
    args = ap.parse_args()
    bad = []
    for w in args.width or [1280, 800]:
        found = problems(layout(args.page, w))
        bad += [f"{w} px: {p}" for p in found]
        print(f"{w} px: " + ("; ".join(found) if found else "no overflowing table, no broken image"))
    if args.screenshot:
        print(f"wrote {screenshot(args.page, args.screenshot)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

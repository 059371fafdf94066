"""Reports as data: a list of blocks rendered to Markdown and to a self-contained HTML page.

A block is a tuple: ``("h1", text)``, ``("h2", text)``, ``("p", text)``, ``("img", src, alt)`` or
``("table", headers, rows)``; text may hold `code` spans. Used by the arena's report and by the
report of one training run (``grouprl report RUN``).
"""

from __future__ import annotations

import html
import re

__all__ = ["render_markdown", "render_html"]


def render_markdown(blocks: list[tuple]) -> str:
    """Markdown of a block list."""
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"## {b[1]}\n")
        elif kind == "p":
            out.append(b[1] + "\n")
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})\n")
        elif kind == "table":
            headers, rows = b[1], b[2]
            lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def _inline_html(text: str) -> str:
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))


def render_html(blocks: list[tuple], title: str) -> str:
    """A self-contained HTML page of a block list (text escaped; images by relative path)."""
    body = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{_inline_html(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(b[1])}</p>")
        elif kind == "img":
            body.append(f'<img src="{html.escape(b[1])}" alt="{html.escape(b[2])}">')
        elif kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;padding:0 1em;color:#222}"
             # a slightly smaller table font and padding: the widest report table (the comparison with
             # the baseline) fits the text column down to an 800 px window (scripts/report_in_browser.py)
             "table{border-collapse:collapse;margin:1em 0;font-size:.92em}"
             "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}"
             "th{background:#f3f3f3}code{background:#f6f6f6;padding:0 .2em}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")

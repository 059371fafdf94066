"""The ``grouprl`` command line (typer + rich)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="grouprl: group-relative RL for language models and LLM agents.",
    no_args_is_help=True,
    add_completion=False,
)

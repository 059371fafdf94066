"""Floor 7: the ``grouprl`` command. Each ``cmd_*.py`` module adds its commands to ``app``."""

from __future__ import annotations

import importlib
import pkgutil

from .app import app


def _load_commands() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_load_commands()


def main() -> None:
    app()


__all__ = ["app", "main"]

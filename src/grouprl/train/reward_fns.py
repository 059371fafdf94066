"""Loading a user's reward function named in a config (``reward_fn`` / ``reward_components``)."""

from __future__ import annotations

import os
import sys

from .config import ConfigError

__all__ = ["load_reward_fn"]


def load_reward_fn(spec: str):
    """Import ``'package.module:function'`` (a verifier ``fn(example, completion) -> float``).

    The module is looked up on ``sys.path`` and then in the current directory (as ``python -m`` and
    ``python script.py`` find a module beside them; the ``grouprl`` console script does not put the
    current directory on the path). The current directory is appended, not prepended, so a file
    there cannot shadow an installed package. Importing runs the module's code: a config that names
    a reward function is as trusted as code (docs/reliability.md)."""
    import importlib

    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise ConfigError(f"reward_fn: {spec!r} is not 'module:function'")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
        importlib.invalidate_caches()
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"reward_fn: cannot import {spec!r} ({exc})") from None
    if not callable(fn):
        raise ConfigError(f"reward_fn: {spec!r} is not callable")
    return fn

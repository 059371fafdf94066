"""``grouprl.train.train``: the entry point of a training run. It holds the run's lock and record
for the whole call, runs the training loop (:func:`grouprl.train.loop.train_loop`, task or ``env=``
runs alike), and on an error before the first step removes the fresh run directory; a full disk
becomes a short ``CheckpointError``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._osutil import disk_full_message, is_disk_full
from .checkpoint import CheckpointError
from .config import TrainConfig
from .loop import train_loop
from .rundir import _RUN, _Run

__all__ = ["train"]


def train(cfg: TrainConfig, *, resume: str | Path | None = None, console: Any = None) -> dict[str, Any]:
    """Run (or resume) RL training as configured; returns the summary (also in summary.json).

    The run directory is locked for the whole call (a second process on it is refused, naming this
    one's pid). A run that fails before its first RL step and before its SFT result is saved leaves
    no directory behind (the same ``name=`` can be retried at once). A full disk is a
    ``CheckpointError`` "no space left on device: ... in DIR", not a traceback.
    """
    run = _Run()
    token = _RUN.set(run)
    try:
        return train_loop(cfg, resume=resume, console=console)
    except Exception as exc:  # (not Ctrl-C: an interrupted run stays resumable)
        run.failed()
        if is_disk_full(exc):
            where = Path(exc.filename).parent if getattr(exc, "filename", None) else run.run_dir or cfg.out_dir
            raise CheckpointError(disk_full_message(None, where)) from None
        raise
    finally:
        _RUN.reset(token)
        run.close()

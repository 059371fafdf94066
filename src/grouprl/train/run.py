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
from .device import resolve_device
from .env_source import EnvSource
from .loop import train_loop
from .rundir import _RUN, _Run
from .task_source import load_initial_model, load_task

__all__ = ["build_warm_start", "train"]


def build_warm_start(cfg: TrainConfig, run_dir: str | Path) -> Any:
    """The policy RL starts from, as ``train`` would load it: for an SFT warm start the SFT runs now and
    is saved to ``run_dir/sft`` (the arena builds one per key and shares it across cells). The task
    task source's warm start (``init``, shipped, task SFT) or, for ``env=``, the env source's (SFT on
    the environment's scripted expert). Returns (model, tokenizer)."""
    if cfg.env is not None:
        return EnvSource(cfg, Path(run_dir), resolve_device(cfg.device), amp=None).initial_model()
    return load_initial_model(cfg, load_task(cfg), Path(run_dir))


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

"""The run directory of ``grouprl train``: creating or reopening it, its exclusive lock, its saved
config, and the record of the run being set up (:class:`_Run`, reached with :func:`current_run`),
which the entry point :func:`grouprl.train.run.train` cleans up. Used by the training loop (task and env runs)."""

from __future__ import annotations

import contextvars
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from .._osutil import LockHeld, exclusive_lock, release_lock, remove_stale_temps, write_text_atomic
from .checkpoint import CheckpointError
from .config import RESUMABLE_FIELDS, ConfigError, TrainConfig, build_config, config_yaml, flatten_sections

__all__ = ["prepare_run_dir", "resume_config", "current_run", "check_resume", "resume_state"]


class _Run:
    """What :func:`train` holds for the run being set up: its directory, whether this call created
    it, and the descriptor of its exclusive lock (``RUN_DIR/.lock``, held until train returns)."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self.fresh = False
        self.lock: int | None = None
        self.guards: list[Any] = []  # reward guards to stop (their worker processes) when train ends, however

    def failed(self) -> None:
        """After an error: remove a run dir this call created that holds no RL step and no SFT
        result yet, so the same ``name=`` can be retried at once (nothing in it is worth keeping)."""
        d = self.run_dir
        if d is None or not self.fresh or (d / "sft").exists() or any((d / "checkpoints").glob("step_*")):
            return
        if (d / "metrics.jsonl").is_file() and (d / "metrics.jsonl").stat().st_size > 0:
            return
        shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        for guard in self.guards:
            guard.close()
        release_lock(self.lock)
        self.lock = None


_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("grouprl_run", default=None)
_UNOWNED_LOCKS: list[int] = []  # locks of prepare_run_dir calls made outside train() (held for the process's life)


def _lock_run_dir(run_dir: Path) -> None:
    """Take ``run_dir``'s exclusive lock (another live process on it is refused, naming its pid),
    then remove the temporary files and directories killed writers left there."""
    try:
        fd = exclusive_lock(run_dir / ".lock")
    except LockHeld as held:
        raise ConfigError(
            f"run directory {run_dir} is in use by another grouprl process (pid {held.pid or 'unknown'}); "
            f"wait for it to finish (or stop it), then continue with `grouprl train --resume {run_dir}`."
        ) from None
    run = _RUN.get()
    if run is not None:
        run.run_dir, run.lock = run_dir, fd
    else:
        _UNOWNED_LOCKS.append(fd)
    # .config.yaml.tmp-*, .summary.json.tmp-*, .sft.tmp-*, checkpoints/.tmp-step_*, checkpoints/.latest.tmp-*
    remove_stale_temps(run_dir)
    remove_stale_temps(run_dir / "checkpoints")


def _read_saved_config(saved: Path) -> dict[str, Any]:
    """A run's config.yaml as a flat dict of fields; an empty or unreadable file is a ConfigError (never a
    default config)."""
    try:
        values = yaml.safe_load(saved.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{saved} is unreadable ({exc}); restore it, or start a new run.") from None
    if not isinstance(values, dict) or not values:
        raise ConfigError(
            f"{saved} is {'empty' if not values else 'not a mapping of key: value'}: the run's config was not "
            "written completely (a kill while the run was being created). Start the run again under a new name, "
            f"or delete {saved.parent} and run the same command again."
        )
    return flatten_sections(values, where=str(saved))  # nested by section, or flat (written before sections)


def prepare_run_dir(cfg: TrainConfig, resume: str | Path | None) -> tuple[Path, TrainConfig]:
    """Create (or reopen, for a resume) the run directory and take its lock; returns it and the
    effective config. config.yaml is written atomically (temp + fsync + rename)."""
    if resume is not None:
        run_dir = Path(resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a grouprl run directory?")
        _lock_run_dir(run_dir)
        return run_dir, cfg
    name = cfg.name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.out_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    _lock_run_dir(run_dir)  # before the check: two runs started at once with one name= cannot both pass it
    if (run_dir / "config.yaml").exists():
        try:
            old = _read_saved_config(run_dir / "config.yaml")
        except ConfigError:
            old = None
        raise ConfigError(
            f"run directory {run_dir} already holds a run"
            + (" with a different config" if old != cfg.model_dump() else "")
            + f"; continue it with `grouprl train --resume {run_dir}` or choose another name=..."
        )
    write_text_atomic(run_dir / "config.yaml", config_yaml(cfg))
    run = _RUN.get()
    if run is not None:
        run.fresh = True
    return run_dir, cfg


def resume_config(run_dir: str | Path, overrides: dict[str, Any]) -> TrainConfig:
    """The saved config of ``run_dir`` with ``overrides`` of the fields a resume may change."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a grouprl run directory?")
    values = _read_saved_config(saved)
    overrides = flatten_sections(overrides, where="--resume overrides")
    bad = sorted(k for k in overrides if k not in RESUMABLE_FIELDS)
    if bad:
        raise ConfigError(
            f"--resume: cannot change {', '.join(bad)} of an existing run (it would change the trajectory); "
            f"only {', '.join(sorted(RESUMABLE_FIELDS))} may be overridden. Start a new run instead."
        )
    values.update(overrides)
    return build_config(values)


def current_run() -> "_Run | None":
    """The record of the run :func:`grouprl.train.run.train` is setting up (None outside it)."""
    return _RUN.get()


def resume_state(cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint records of its config: the hash and the names of the fields it covers."""
    return {"config_hash": cfg.compat_hash(), "config_fields": sorted(TrainConfig.model_fields)}


def check_resume(cfg: TrainConfig, state: dict[str, Any], ckpt: Path, run_dir: Path) -> None:
    """Refuse to resume checkpoint ``ckpt`` with a config that would change the run's trajectory.

    The checkpoint's hash covers the fields its version had (``config_fields``; a checkpoint written
    before that record covers the keys of the run's config.yaml, which every version writes in full).
    A field added since must hold its default, which the resumed config gives it (the run's
    config.yaml lacks it): then the old run resumes. A differing value is refused, naming the fields."""
    fields = state.get("config_fields")
    if fields is None:
        fields = list(_read_saved_config(run_dir / "config.yaml"))
    new = sorted(f for f in TrainConfig.model_fields if f not in set(fields) and f not in RESUMABLE_FIELDS
                 and getattr(cfg, f) != TrainConfig.model_fields[f].get_default(call_default_factory=True))
    if new:
        raise CheckpointError(f"checkpoint {ckpt} predates the field(s) {', '.join(new)}, which this config sets "
                              "away from their default; resume without them, or start a new run.")
    if state["config_hash"] != cfg.compat_hash(fields):
        raise CheckpointError(
            f"checkpoint {ckpt} was written by a run with a different config (hash {state['config_hash']} vs "
            f"{cfg.compat_hash(fields)}); resume with the run's own config.yaml or start a new run.")

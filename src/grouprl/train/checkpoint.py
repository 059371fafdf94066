"""Atomic checkpoints: tensors in safetensors, everything else in JSON, no pickle.

A checkpoint is a directory ``checkpoints/step_NNNNNN/`` holding

* ``model.safetensors`` — the policy's state dict;
* ``state.safetensors`` — every other tensor (optimizer moments, torch RNG state, sampler tensors);
* ``state.json`` — the rest (step, config hash, optimizer hyper-parameters, Python/numpy RNG state,
  sampler and estimator/loss state), with tensors replaced by references into
  ``state.safetensors``, plus a SHA-256 of both tensor files.

It is written into a temporary directory, fsync-ed and renamed into place (``os.replace``); then the
one-line file ``checkpoints/latest`` is replaced the same way. A kill at any moment leaves either
the previous or the new checkpoint, never a half-written one (a step directory exists only once
complete, so a kill between the two renames of the first checkpoint, which leaves no ``latest``,
resumes from that directory). Loading checks the hashes and raises ``CheckpointError`` naming the
file and what to do. A write that fails (a full disk: ``CheckpointError`` "no space left on
device: N MB needed in DIR") removes its temporary directory; ``latest`` still names the last
complete checkpoint.

The Python and numpy global RNG states are stored too; :func:`seed_global_rngs` seeds them at the
start of a run, so two identical runs write identical ``state.json`` files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safetensors.torch import load_file, save_file

from .._osutil import disk_full_message, fsync_dir, is_disk_full, write_text_atomic

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state", "set_rng_state",
           "seed_global_rngs"]


class CheckpointError(RuntimeError):
    """A missing, corrupt or incompatible checkpoint."""


# ------------------------------------------------------------------ tensors <-> JSON references
def _split(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(obj.astype(np.int64) if obj.dtype.kind in "ui" else np.array(obj))
        return {"__ndarray__": path, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        keys = list(obj)
        return {
            "__dict__": [[_split(k, tensors, f"{path}.k{i}"), _split(obj[k], tensors, f"{path}.{i}")] for i, k in enumerate(keys)]
        }
    if isinstance(obj, (list, tuple)):
        items = [_split(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} at {path}; use tensors, numbers, strings, lists, dicts")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_join(k, tensors): _join(v, tensors) for k, v in obj["__dict__"]}
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


# ------------------------------------------------------------------ RNG
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch global RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def seed_global_rngs(seed: int) -> None:
    """Seed the Python, numpy and torch global RNGs from the run's seed (at the start of a run: the
    states a checkpoint stores then depend on the config alone, not on what the process did before)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ------------------------------------------------------------------ files
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: tied weights share storage, which safetensors refuses
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``ckpt_root/step_{step:06d}`` atomically and point ``ckpt_root/latest`` at it.

    ``state``: anything else to restore (config hash, sampler/estimator state, RNG states, ...):
    nested dicts/lists of tensors, numpy arrays, numbers and strings.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tensors: dict[str, torch.Tensor] = {}
    meta = _split({"step": step, "optimizer": optimizer.state_dict(), **state}, tensors, "s")
    weights = _model_tensors(model)
    need = sum(t.numel() * t.element_size() for t in (*weights.values(), *tensors.values())) + (1 << 20)
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(weights, str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "state.safetensors"))
        for f in ("model.safetensors", "state.safetensors"):
            _fsync_file(tmp / f)
        doc = {
            "format": 1,
            "step": step,
            "sha256": {f: _sha256(tmp / f) for f in ("model.safetensors", "state.safetensors")},
            "state": meta,
        }
        with open(tmp / "state.json", "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        if final.exists():  # a complete checkpoint of the same step (re-saved after a resume)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        write_text_atomic(root / "latest", name + "\n")
    except BaseException as exc:  # a failed write leaves no partial directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise CheckpointError(disk_full_message(need, root)) from None
        raise
    # prune old checkpoints (and temp dirs left by killed writers)
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The checkpoint ``latest`` points to, or None when the run has none yet."""
    root = Path(ckpt_root)
    pointer = root / "latest"
    if not pointer.exists():
        # a kill between the first checkpoint's two renames: its directory is complete (it appears
        # by a rename of a fully written temporary), so it is the one to resume from
        steps = sorted(p for p in root.glob("step_*") if p.is_dir())
        return steps[-1] if steps else None
    name = pointer.read_text().strip()
    path = root / name
    if not name or not path.is_dir():
        raise CheckpointError(
            f"{pointer} points to {name!r}, which does not exist; point it at one of "
            f"{sorted(p.name for p in root.glob('step_*')) or 'no checkpoints (delete it to start over)'}."
        )
    return path


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizer``) in place from checkpoint dir ``path``; return its state.

    Raises ``CheckpointError`` for a missing or corrupt file (hash mismatch, unreadable safetensors
    or JSON) or a model whose parameter names/shapes differ from the checkpoint's.
    """
    path = Path(path)
    for f in ("state.json", "model.safetensors", "state.safetensors"):
        if not (path / f).is_file():
            raise CheckpointError(
                f"checkpoint {path}: {f} is missing; the checkpoint is incomplete — delete {path} and point "
                f"{path.parent / 'latest'} at an earlier checkpoint, or start a new run."
            )
    try:
        doc = json.loads((path / "state.json").read_text())
        sums = doc["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: state.json is corrupt ({exc}); delete {path} or start a new run.") from None
    for f in ("model.safetensors", "state.safetensors"):
        if _sha256(path / f) != sums.get(f):
            raise CheckpointError(
                f"checkpoint {path}: {f} is corrupt (its SHA-256 differs from the one recorded when it was "
                f"written); delete {path} and point {path.parent / 'latest'} at an earlier checkpoint."
            )
    try:
        model_sd = load_file(str(path / "model.safetensors"))
        tensors = load_file(str(path / "state.safetensors"))
    except Exception as exc:  # pragma: no cover - the hash check catches this first
        raise CheckpointError(f"checkpoint {path}: cannot read tensors ({exc}).") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(model_sd))
    unexpected = sorted(set(model_sd) - set(own))
    bad_shape = [k for k in own if k in model_sd and tuple(own[k].shape) != tuple(model_sd[k].shape)]
    if missing or unexpected or bad_shape:
        detail = (missing and f"missing {missing[:3]}") or (unexpected and f"unexpected {unexpected[:3]}") or (
            f"shape of {bad_shape[0]}: checkpoint {tuple(model_sd[bad_shape[0]].shape)} vs model {tuple(own[bad_shape[0]].shape)}"
        )
        raise CheckpointError(
            f"checkpoint {path} does not fit this model ({detail}); resume with the config the run was started with."
        )
    model.load_state_dict(model_sd, strict=True)
    state = _join(doc["state"], tensors)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state

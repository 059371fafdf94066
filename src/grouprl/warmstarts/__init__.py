"""Warm starts shipped inside the package: small SFT checkpoints that RL starts from.

A small model learns arithmetic by SFT with a sudden, seed-dependent jump after a long plateau; its
timing varies with the seed and with the CPU's floating-point kernels (the same seed jumped after
700 SFT steps on one machine and not within 3,000 on another). RL from a warm start that has not
jumped does nothing. A shipped warm start removes that chaotic event from every run: the default
``grouprl train`` evaluates and trains the same checkpoint on every machine, and skips the 3-4
minutes of SFT. Seeds then vary the RL phase only (sampling, prompt order), not the warm start.

Each warm start is a directory beside this file: a Hugging Face checkpoint (``config.json``,
``model.safetensors``, the tokenizer files) and ``warmstart.json``, its manifest: the task and
model it fits, the SFT settings and the command that built it, the accuracy it reached, and the
SHA-256 of every file, checked before each use. ``scripts/build_warmstart.py`` rebuilds one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["WarmStart", "WarmStartError", "shipped", "get", "find", "verify", "sha256_file", "MANIFEST"]

ROOT = Path(__file__).resolve().parent
MANIFEST = "warmstart.json"


class WarmStartError(ValueError):
    """A shipped warm start is missing, does not fit the config, or fails its checksum."""


@dataclass(frozen=True)
class WarmStart:
    """One shipped warm start: its directory and manifest."""

    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def model(self) -> str:
        return self.manifest["model"]

    def fits(self, task: str, model: str, task_kwargs: dict[str, Any]) -> str | None:
        """None when this warm start fits (task, model, task_kwargs); else the reason it does not.

        Task arguments other than the manifest's ``free_task_kwargs`` (e.g. the eval split) could
        put prompts the warm start was trained on into the evaluation set, so they do not fit."""
        if task != self.task:
            return f"it is for task {self.task!r}, not {task!r}"
        if model != self.model:
            return f"it is for model {self.model!r}, not {model!r}"
        bound = sorted(set(task_kwargs) - set(self.manifest.get("free_task_kwargs", [])))
        if bound:
            return f"task_kwargs {', '.join(bound)} would change the task it was trained on"
        return None

    def describe(self) -> str:
        sft = self.manifest.get("sft", {})
        return (f"shipped warm start {self.name} (SFT seed {sft.get('seed')}, {sft.get('steps_run')} steps, "
                f"held-out greedy acc {self.manifest.get('heldout_greedy_acc', 0):.3f} on {self.manifest.get('heldout_n')} prompts)")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped() -> dict[str, WarmStart]:
    """Every shipped warm start by name (the directories beside this module that hold a manifest)."""
    out = {}
    for d in sorted(p for p in ROOT.iterdir() if (p / MANIFEST).is_file()):
        out[d.name] = WarmStart(d.name, d, json.loads((d / MANIFEST).read_text()))
    return out


def get(name: str) -> WarmStart:
    """The shipped warm start ``name``; an unknown name lists the shipped ones."""
    ws = shipped()
    if name not in ws:
        raise WarmStartError(f"no shipped warm start {name!r}; shipped: {', '.join(ws) or 'none'}")
    return ws[name]


def find(task: str, model: str, task_kwargs: dict[str, Any] | None = None) -> WarmStart | None:
    """The shipped warm start that fits (task, model, task_kwargs), or None."""
    for ws in shipped().values():
        if ws.fits(task, model, task_kwargs or {}) is None:
            return ws
    return None


def verify(ws: WarmStart) -> None:
    """Check every file of the manifest against its SHA-256 (a corrupt install is an error, not a run)."""
    for fname, digest in ws.manifest["files"].items():
        path = ws.path / fname
        if not path.is_file():
            raise WarmStartError(f"shipped warm start {ws.name}: {fname} is missing from {ws.path}; reinstall grouprl.")
        if sha256_file(path) != digest:
            raise WarmStartError(f"shipped warm start {ws.name}: {fname} does not match its SHA-256 in {MANIFEST}; "
                                 "reinstall grouprl, or rebuild it with scripts/build_warmstart.py.")

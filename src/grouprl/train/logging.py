"""Run output: JSONL metric files (and TensorBoard events when ``tensorboard`` is installed).

One JSON object per line, each with ``step``. Every line is flushed (a killed process loses no
line) and, by default, fsync-ed; a writer made with ``fsync_every_line=False`` is fsync-ed by
``sync()`` instead, which the training loop calls before each checkpoint (so every line up to a
checkpoint is on disk before the checkpoint is; an fsync per step cost about 5 ms, measured).
On resume the files are cut back to the checkpoint's step (``truncate_after``), so a killed and
resumed run's files equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .._osutil import write_text_atomic

__all__ = ["JsonlWriter", "read_jsonl", "truncate_after", "TensorBoard", "environment_versions"]


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class JsonlWriter:
    """Append-only JSONL file; ``write(row)`` flushes the line and fsyncs it unless
    ``fsync_every_line=False`` (then ``sync()`` and ``close()`` fsync)."""

    def __init__(self, path: str | Path, *, fsync_every_line: bool = True) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "a")
        self.fsync_every_line = fsync_every_line

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._fh.flush()
        if self.fsync_every_line:
            os.fsync(self._fh.fileno())

    def sync(self) -> None:
        """Flush and fsync what was written so far."""
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
        self._fh.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All complete lines of a JSONL file (a torn last line from a kill is ignored)."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_after(path: str | Path, step: int) -> None:
    """Keep only the complete lines with ``row['step'] <= step`` (atomically rewritten)."""
    p = Path(path)
    if not p.exists():
        return
    keep = [json.dumps(r) for r in read_jsonl(p) if r.get("step", -1) <= step]
    write_text_atomic(p, "".join(line + "\n" for line in keep))


class TensorBoard:
    """Scalars to TensorBoard event files when ``torch.utils.tensorboard`` works; a no-op otherwise.

    ``tensorboard: true`` (the default) with TensorBoard not installed is not an error (the JSONL
    files hold every metric), but it is said once, as a one-line note on ``console`` (or a logging
    warning without one); ``self.note`` holds it."""

    def __init__(self, log_dir: str | Path, enabled: bool = True, console: Any = None) -> None:
        self.writer = None
        self.note: str | None = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as exc:  # tensorboard not installed
                self.note = (f"tensorboard=true but TensorBoard is not importable ({type(exc).__name__}: {exc}); "
                             "no TensorBoard logs (metrics.jsonl has every metric). pip install tensorboard, "
                             "or set tensorboard=false to silence this.")
                if console is not None:
                    console.print(f"[yellow]note:[/] {self.note}")
                else:
                    import logging

                    logging.getLogger("grouprl.train").warning(self.note)
                return
            self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, prefix: str, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(row["step"])
        for k, v in row.items():
            v = _clean(v)
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def environment_versions() -> dict[str, Any]:
    """The versions a run's numbers depend on (recorded in summary.json, shown by ``grouprl report``)."""
    import platform
    from importlib import metadata

    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("grouprl", "torch", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["torch_threads"] = torch.get_num_threads()
    return out

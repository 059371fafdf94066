"""Durable files, exclusive locks and child processes that die with their parent (stdlib only).

Shared by the trainer (run dirs, checkpoints), the arena (sweep lock, warm starts) and the reward
guard (its worker process). This module imports nothing from grouprl, so any module may use it.

* :func:`write_text_atomic` — temp file + fsync + ``os.replace`` + fsync of the directory: a reader
  (and a ``--resume``) sees the old content or the new one, never an empty or torn file.
* :func:`exclusive_lock` — an ``fcntl.flock`` on a lock file, taken without waiting; held by another
  process it raises :class:`LockHeld` naming that process's pid. The kernel drops the lock when the
  holder dies (``kill -9`` included), so a stale lock file never blocks anything; a forked child
  closes its inherited copies at once, so no child keeps a dead holder's lock.
* :func:`remove_stale_temps` — removes the temporary files/directories a killed writer left behind.
* :func:`die_with_parent` — Linux ``PR_SET_PDEATHSIG``: SIGKILL this process when its parent dies.
* :func:`disk_full_message` — "no space left on device: N MB needed in DIR".
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Iterable

__all__ = ["write_text_atomic", "fsync_dir", "fsync_tree", "exclusive_lock", "release_lock", "LockHeld",
           "remove_stale_temps", "die_with_parent", "is_disk_full", "disk_full_message"]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory (makes a rename inside it durable); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file under ``path`` and then every directory (before ``path`` is renamed into place)."""
    root = Path(path)
    for p in sorted(root.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(root)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path``'s content by ``text`` atomically (temp + fsync + rename + directory fsync).

    The temporary file is ``.NAME.tmp-PID`` beside ``path`` (removed on error; one left by a kill is
    removed by :func:`remove_stale_temps`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


#: descriptors of the locks this process holds; a forked child closes its copies at once (a reward
#: worker must not keep its trainer's run locked after the trainer died)
_HELD: set[int] = set()


def _drop_inherited_locks() -> None:
    for fd in _HELD:
        try:
            os.close(fd)  # the child's copy only: the parent keeps its lock
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


class LockHeld(RuntimeError):
    """Another live process holds the lock; ``pid`` is its process id (None if it had not written it yet)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path, self.pid = path, pid
        super().__init__(f"{path} is held by process {pid if pid is not None else '(unknown pid)'}")


def exclusive_lock(path: str | os.PathLike) -> int:
    """Take an exclusive ``flock`` on ``path`` (created if missing) without waiting; returns the file
    descriptor that holds it (pass it to :func:`release_lock`). Writes this process's pid into the
    file. Raises :class:`LockHeld` with the holder's pid when another process holds it."""
    import fcntl

    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            os.close(fd)
            raise
        try:  # the holder writes its pid right after taking the lock: give it a moment to appear
            deadline = time.monotonic() + 2.0
            while not (text := os.pread(fd, 64, 0).decode(errors="replace").strip()).isdigit() \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            os.close(fd)
        raise LockHeld(path, int(text) if text.isdigit() else None) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD.add(fd)
    return fd


def release_lock(fd: int | None) -> None:
    """Release a lock taken by :func:`exclusive_lock` (``LOCK_UN`` first: a forked child holding a
    copy of the descriptor must not keep it)."""
    import fcntl

    if fd is None:
        return
    _HELD.discard(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove_stale_temps(directory: str | os.PathLike, patterns: Iterable[str] = (".*.tmp-*", ".tmp-*")) -> list[Path]:
    """Remove the files and directories of ``directory`` matching ``patterns`` (temporaries that a
    killed writer left behind); returns what was removed. Call it only while holding the lock of
    whatever writes there, so that no live writer's temporary is removed."""
    root = Path(directory)
    if not root.is_dir():
        return []
    removed = []
    for pattern in patterns:
        for p in root.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


_LIBC: list = []  # the loaded libc, once (load it before a fork: the child then only makes the call)


def load_libc() -> object | None:
    """libc through ctypes (cached), or None where there is none (not Linux/glibc)."""
    if not _LIBC:
        try:
            import ctypes

            _LIBC.append(ctypes.CDLL("libc.so.6", use_errno=True))
        except Exception:  # pragma: no cover - not Linux / no glibc
            _LIBC.append(None)
    return _LIBC[0]


def die_with_parent(parent_pid: int | None = None) -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``), so a
    ``kill -9`` of the parent leaves no orphan behind. With ``parent_pid`` (the parent's pid read
    before the fork/spawn), exit at once if the parent already died before the request took effect.
    Elsewhere a no-op."""
    libc = load_libc()
    if libc is None:  # pragma: no cover - not Linux / no glibc
        return
    libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError that says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(need_bytes: int | None, directory: str | os.PathLike) -> str:
    """The one-line message for a full disk: what is needed where, and what to do."""
    need = f"{-(-need_bytes // 1_000_000)} MB needed" if need_bytes is not None else "more space needed"
    return (f"no space left on device: {need} in {directory}; free some space (or point out_dir elsewhere) "
            "and continue with --resume")

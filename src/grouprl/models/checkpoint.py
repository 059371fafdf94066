"""Saving and loading Hugging Face checkpoint directories, offline.

:func:`save_pretrained` never leaves a half-written checkpoint at ``path``: it writes everything
into a temporary directory beside ``path`` and renames it into place. :func:`load_pretrained`
reads any local Hugging Face causal-LM directory (config + safetensors or bin weights + tokenizer
files) without touching the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from transformers.utils import logging as hf_logging
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from .._osutil import fsync_dir, fsync_tree

__all__ = ["save_pretrained", "load_pretrained", "check_checkpoint_dir"]

_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' per-file progress bars (a training log is no place for them)."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, path: str | os.PathLike,
                    files: dict[str, str] | None = None) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` to the directory ``path``, atomically.

    ``files``: more text files to publish with it (name -> content, e.g. a training log), written
    into the same temporary directory, so they appear together with the weights or not at all.
    Everything is written into a fresh temporary directory in ``path``'s parent and fsync-ed; only
    when that succeeded is it renamed to ``path``. An existing ``path`` is first renamed aside and removed
    only after the new directory is in place, so a failure at any point leaves either the old or
    the new checkpoint at ``path`` (or, if the process dies between the two renames, the old one
    under ``.<name>.old-*`` beside it).
    """
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_pretrained: {str(path)!r} is a file, not a checkpoint directory; pick another path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with _no_progress_bars():
            model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.rmdir(old)
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def check_checkpoint_dir(path: str | os.PathLike, *, tokenizer: bool = True) -> Path:
    """Raise FileNotFoundError naming what a checkpoint directory lacks; return it as a Path."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist (or is not a directory).")
    present = sorted(p.name for p in path.iterdir())
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / f).is_file() for f in _WEIGHTS):
        missing.append("weights (one of " + ", ".join(_WEIGHTS) + ")")
    if tokenizer and not any((path / f).is_file() for f in _TOKENIZER):
        missing.append("tokenizer files (one of " + ", ".join(_TOKENIZER) + ")")
    if missing:
        raise FileNotFoundError(
            f"{str(path)!r} is not a complete Hugging Face checkpoint: missing {'; '.join(missing)}. "
            f"It holds: {present or 'nothing'}. Save one with grouprl.models.save_pretrained(model, tokenizer, path) "
            "or download the model's files into it."
        )
    return path


_GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast", None)


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The directory's tokenizer, exactly as its tokenizer.json describes it when that is generic.

    transformers 5's AutoTokenizer maps some model types (qwen2 among them) to their own tokenizer
    class whatever tokenizer_config.json says, and that class rebuilds the pre-tokenizer and decoder
    of the Hub model: a grouprl char or BPE tokenizer would come back wrong. A directory whose
    tokenizer_config.json names a generic class (or none) and that holds a tokenizer.json is
    therefore loaded with PreTrainedTokenizerFast; anything else goes through AutoTokenizer.
    (Outside grouprl, load a qwen2-architecture grouprl checkpoint's tokenizer the same way:
    ``PreTrainedTokenizerFast.from_pretrained(path)``; llama-architecture ones load with either.)
    """
    cls_name = None
    cfg = path / "tokenizer_config.json"
    if cfg.is_file():
        cls_name = json.loads(cfg.read_text()).get("tokenizer_class")
    if (path / "tokenizer.json").is_file() and cls_name in _GENERIC_TOKENIZER_CLASSES:
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_pretrained(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = torch.float32,
    attn_implementation: str | None = "sdpa",
    padding_side: str | None = "left",
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from a local checkpoint directory, offline.

    Any local Hugging Face causal-LM checkpoint works (config.json, safetensors or bin weights,
    tokenizer files); a directory that lacks one of them raises FileNotFoundError naming it.
    ``dtype=None`` keeps the dtype stored in the config. ``padding_side`` overrides the saved
    tokenizer's (left padding suits batched generation; ``None`` keeps it). A tokenizer without a
    pad token gets its eos token as pad.
    """
    path = check_checkpoint_dir(path)
    tok = _load_tokenizer(path)
    if padding_side is not None:
        tok.padding_side = padding_side
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    kwargs = dict(local_files_only=True)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with _no_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tok

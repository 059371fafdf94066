"""Where the trainer runs and in which precision: device choice, bf16 autocast, generators,
host-to-device transfers and optional LoRA (the truncated importance weights of ``rollout_is`` are
``grouprl.losses.importance``).

Everything here is a small function the training loop calls; on a CPU-only machine with the
defaults (``device=auto``, ``precision=auto``) every one of them is a no-op, so CPU runs are
bit-identical to runs before this module existed.

- ``resolve_device("auto")`` -> ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``.
- ``resolve_precision("auto", device)`` -> ``bf16`` on a CUDA device that supports bf16, else
  ``fp32`` (bf16 autocast on a CPU is allowed when asked for explicitly: it is how the tests exercise
  the bf16 path, but it is rarely faster there).
- ``autocast(device, precision)``: the region for the policy/reference forwards (and the backward
  that follows). Parameters stay fp32 (master weights); log-probs leave the region as fp32
  (``response_logprobs`` casts the logits to fp32 before the log-softmax and ``fp32`` is applied
  again by the loop before the loss), so advantages and losses are computed in fp32.
- ``device_generator(gen, device)``: a torch.Generator on ``device`` seeded from ``gen`` (CUDA
  sampling needs a CUDA generator); on CPU the given generator is returned untouched, so CPU sampling
  keeps its exact random stream.
- ``to_device(t, device)``: pinned-memory, non-blocking copies only for large host tensors going to
  CUDA (see ``PIN_MIN_BYTES``); everything else is a plain ``.to``.
- ``apply_lora``: wrap the policy in ``peft`` LoRA adapters (optional extra ``grouprl[lora]``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import Tensor

__all__ = [
    "DEVICES", "PRECISIONS", "PIN_MIN_BYTES",
    "resolve_device", "resolve_precision", "autocast", "device_generator", "to_device",
    "apply_lora", "trainable_parameters",
]

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")

#: Host tensors at least this large are copied to CUDA through pinned memory, non-blocking. The
#: trainer's per-step host->device traffic (prompt ids, rewards: kilobytes) is far below it, so the
#: loop never pins: pinning a small tensor costs more (a page-locked allocation) than the copy.
#: It matters for bulk inputs such as the (B, T) tensors of benchmarks/gpu_check.py.
PIN_MIN_BYTES = 1 << 20


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU raises ValueError.

    ``cuda:N`` picks a device index.
    """
    name = str(device)
    base = name.split(":", 1)[0]
    if base not in DEVICES:
        raise ValueError(f"device={device!r}: choose one of {', '.join(DEVICES)} (or cuda:N).")
    if base == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} but torch sees no CUDA GPU (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda}); use device=cpu or device=auto, or install a CUDA build of torch."
        )
    return torch.device(name)


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return True  # CPU autocast supports bf16 in every torch this project supports


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on a CUDA device with bf16 support, else ``fp32``.

    An explicit ``bf16`` on a device without bf16 support raises ValueError.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and _bf16_supported(device) else "fp32"
    if precision == "bf16" and not _bf16_supported(device):
        raise ValueError(f"precision=bf16: device {device} does not support bf16; use precision=fp32.")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast region for forwards (and their backward) at ``precision``; a no-op for fp32.

    Autocast runs matmuls in bf16 while parameters, their gradients and the optimizer state stay
    fp32; reductions such as log-softmax stay in fp32 under autocast.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"autocast: precision={precision!r}; expected 'fp32' or 'bf16' (resolve 'auto' first).")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def device_generator(gen: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` whose stream is fixed by ``gen``'s seed; ``gen`` itself on CPU.

    CUDA kernels (``torch.multinomial`` on CUDA probabilities) need a CUDA generator. The CUDA stream
    differs from the CPU one for the same seed, so CUDA and CPU runs draw different samples; each is
    reproducible on its own device.
    """
    if device.type == gen.device.type:
        return gen
    return torch.Generator(device=device).manual_seed(gen.initial_seed())


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; large CPU tensors bound for CUDA go through pinned memory, non-blocking."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu" and t.numel() * t.element_size() >= PIN_MIN_BYTES:
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# ---------------------------------------------------------------------------- LoRA
def apply_lora(model: Any, *, rank: int, alpha: float, target_modules: list[str] | str, dropout: float = 0.0) -> Any:
    """Wrap ``model`` in peft LoRA adapters of ``rank`` (0: return ``model`` unchanged).

    Only the adapter matrices are trainable; the base weights are frozen. Needs the optional extra
    ``pip install 'grouprl[lora]'`` (peft).
    """
    if rank == 0:
        return model
    if rank < 0:
        raise ValueError(f"lora_rank={rank}: use 0 (off) or a positive rank such as 8 or 16.")
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("lora_rank > 0 needs peft: pip install 'grouprl[lora]' (or peft>=0.12).") from None
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules, lora_dropout=dropout,
                     bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def trainable_parameters(model: torch.nn.Module) -> Iterator[torch.nn.Parameter]:
    """The parameters the optimizer updates (all of them, or the LoRA adapters only)."""
    return (p for p in model.parameters() if p.requires_grad)

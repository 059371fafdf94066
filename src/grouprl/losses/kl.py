"""Per-token KL estimators between the current policy and a reference policy (Schulman's k1/k2/k3).

With d = log π_θ − log π_ref on a sampled token (so the sample comes from π_θ):

| kind                    | value           | unbiased for KL(π_θ‖π_ref)?     |
|-------------------------|-----------------|---------------------------------|
| ``k1`` (``kl``)         | d               | yes; high variance, can be < 0  |
| ``abs``                 | abs(d)          | no                              |
| ``k2`` (``mse``)        | ½·d²            | no (small bias for small d)     |
| ``k3`` (``low_var_kl``) | e^{−d} + d − 1  | yes; always ≥ 0                 |

k3 clamps −d to [−20, 20] and the result to [−10, 10], as verl.

``k3`` is the estimator of the GRPO paper (DeepSeekMath, arXiv:2402.03300), with verl's clamps.
A trailing ``+`` (``"k1+"``, ``"k3+"``, ``"abs+"``, ...) is the straight-through variant of verl
0.9.1: the forward value of the named estimator, the gradient of k2 (∂/∂ log π_θ = d), which is the
gradient of the true KL for on-policy samples while k1/k3 give biased gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kl_penalty", "KL_TYPES"]

_ALIASES = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}
KL_TYPES: tuple[str, ...] = tuple(sorted(_ALIASES)) + tuple(sorted(k + "+" for k in _ALIASES))


def _base(kind: str, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    d = logprobs - ref_logprobs
    if kind == "k1":
        return d
    if kind == "abs":
        return d.abs()
    if kind == "k2":
        return 0.5 * d.square()
    # k3: with x = log π_ref − log π_θ = −d:  e^x − x − 1
    x = (-d).clamp(-20.0, 20.0)
    return (torch.exp(x) - x - 1.0).clamp(-10.0, 10.0)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate (same shape as the inputs) of the estimator ``kind`` (see module doc).

    ``logprobs`` carries the gradient; ``ref_logprobs`` is treated as a constant (detached).
    """
    if not isinstance(kind, str) or kind.rstrip("+") not in _ALIASES or kind.count("+") > 1:
        from ..core import suggest

        raise ValueError(f"unknown KL estimator kind={kind!r}: {suggest(str(kind), KL_TYPES)}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"ref_logprobs has shape {tuple(ref_logprobs.shape)}, logprobs has {tuple(logprobs.shape)}"
        )
    ref = ref_logprobs.detach().to(logprobs.dtype)
    straight_through = kind.endswith("+")
    value = _base(_ALIASES[kind.rstrip("+")], logprobs, ref)
    if not straight_through:
        return value
    k2 = _base("k2", logprobs, ref)
    return k2 - k2.detach() + value.detach()

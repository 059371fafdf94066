"""Rollout importance weights: truncated importance sampling (TIS) between the policy that sampled
a rollout and the trainer's recomputed old policy.

The rollout engine samples from mu (its log-probs are the *sampling* log-probs); the trainer's
recomputed old policy pi_old differs from mu by numerics (bf16, kernels, another engine such as
vLLM). Truncated importance sampling reweights each token's policy-gradient term by

    token:     w_t = min(pi_old(y_t) / mu(y_t), C)
    sequence:  w   = min(prod_t pi_old(y_t) / mu(y_t), C)   (one weight per row, on every token)

The truncated ratio is V-trace's rho_t = min(rho_bar, pi/mu) (IMPALA, arXiv:1802.01561, Section 4.1,
eq. 1); its use against the rollout-vs-trainer mismatch of LLM RL is Yao et al., "Your efficient RL
framework secretly brings you off-policy RL training" (2025, a blog post without an arXiv id,
https://fengyao.notion.site/off-policy-rl), implemented as verl's ``rollout_is`` and TRL's
``vllm_importance_sampling``. The weights go to ``grouprl.losses.policy_loss(...,
rollout_is_weights=w)``, which multiplies each token's policy-gradient loss by them before
aggregation; the verl and TRL plug-ins pass the weights their frameworks compute, and a plug-in
user with both log-probs at hand may compute them here instead.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["ROLLOUT_IS", "rollout_is", "rollout_is_weights"]

#: the levels of ``rollout_is`` (``none`` switches the correction off)
ROLLOUT_IS = ("none", "token", "sequence")


def rollout_is_weights(
    old_logprobs: Tensor, sampling_logprobs: Tensor, mask: Tensor, *, level: str = "token", cap: float = 2.0
) -> tuple[Tensor, dict[str, float]]:
    """Truncated importance weights w (B, T) correcting the rollout-vs-trainer log-prob mismatch.

    ``old_logprobs`` log pi_old and ``sampling_logprobs`` log mu, both (B, T); ``mask`` (B, T) the
    trained tokens. ``level="token"``: w_t = min(pi_old(y_t) / mu(y_t), C); ``level="sequence"``:
    w = min(prod_t pi_old(y_t) / mu(y_t), C) on every token of the row; C = ``cap``. Weights are
    detached (no gradient), 0 on masked tokens, float32 (B, T). Returns the weights and metrics:
    mean weight over valid tokens (``rollout_is/mean``), the fraction of tokens (rows for
    ``sequence``) clipped at C (``rollout_is/clipped``), and the mean |log ratio| per token
    (``rollout_is/abs_log_ratio``).
    """
    if level not in ("token", "sequence"):
        raise ValueError(f"rollout_is level={level!r}: choose 'token' or 'sequence' (or 'none' to switch it off).")
    if not cap > 0:
        raise ValueError(f"rollout_is_cap={cap}: it must be > 0 (verl and TRL use 2.0).")
    if old_logprobs.dim() != 2 or old_logprobs.shape != sampling_logprobs.shape or old_logprobs.shape != mask.shape:
        raise ValueError(
            f"rollout_is_weights: old_logprobs {tuple(old_logprobs.shape)}, sampling_logprobs "
            f"{tuple(sampling_logprobs.shape)} and mask {tuple(mask.shape)} must have the same (B, T) shape."
        )
    m = mask.bool()
    log_ratio = (old_logprobs.detach().float() - sampling_logprobs.detach().float()).masked_fill(~m, 0.0)
    if level == "token":
        raw = log_ratio.exp()
        clipped_frac = ((raw > cap) & m).sum() / m.sum().clamp(min=1)
        w = raw.clamp(max=cap)
    else:
        seq = log_ratio.sum(dim=1, keepdim=True).clamp(max=80.0)  # exp stays finite; clipped at cap anyway
        raw_seq = seq.exp()
        has = m.any(dim=1)
        clipped_frac = ((raw_seq.squeeze(1) > cap) & has).sum() / has.sum().clamp(min=1)
        w = raw_seq.clamp(max=cap).expand_as(log_ratio)
    w = w.masked_fill(~m, 0.0)
    n = m.sum().clamp(min=1)
    metrics = {
        "rollout_is/mean": float(w.sum() / n),
        "rollout_is/clipped": float(clipped_frac),
        "rollout_is/abs_log_ratio": float(log_ratio.abs().sum() / n),
    }
    return w, metrics


def rollout_is(
    old_logprobs: Tensor, sampling_logprobs: Tensor | None, mask: Tensor, *, level: str, cap: float,
) -> tuple[Tensor | None, dict[str, float]]:
    """The ``rollout_is`` option as a function: ``level="none"`` -> (None, {}); else
    ``rollout_is_weights`` (``sampling_logprobs`` must then be given).

    The weights go to ``policy_loss(..., rollout_is_weights=w)``, which multiplies each token's
    policy-gradient loss by them before aggregation (a sequence-level loss such as ``gmpo`` takes the
    geometric mean of its row's weights); KL and entropy terms are not reweighted, as in verl.
    """
    if level == "none":
        return None, {}
    if sampling_logprobs is None:
        raise ValueError("rollout_is: the rollout has no sampling log-probs; set rollout_is=none.")
    return rollout_is_weights(old_logprobs, sampling_logprobs, mask, level=level, cap=cap)

"""MaxMin-RLHF's reward mixture (maxmin-rlhf.md §2.1), arXiv:2402.08925: EM over K reward models.

Preference data are comparisons (x, y_w, y_l) grouped by user h. Under reward model φ_u the
Bradley–Terry likelihood of one comparison is σ(r_u(x, y_w) − r_u(x, y_l)). EM with hard
assignment:

* E-step: u*(h) = argmax_u Σ_{comparisons of h} log σ(margin_u)  (the log of the paper's product);
* M-step: refit each φ_u on the comparisons of the users assigned to it (BT negative log-likelihood).

``e_step`` is the assignment from given margins (any reward models); ``fit_reward_mixture`` runs
the whole EM for linear reward models r_u(x, y) = θ_u · f(x, y) on feature differences
d = f(x, y_w) − f(x, y_l), the small, self-contained form used in tests and toy runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import factorize

__all__ = ["bt_log_likelihood", "e_step", "fit_reward_mixture", "RewardMixture"]


def bt_log_likelihood(margins: Tensor, users: Tensor, num_users: int | None = None) -> Tensor:
    """Per-user, per-model BT log-likelihood Σ log σ(margin), float64 (num_users, K).

    ``margins``: (N, K) reward margins r_u(y_w) − r_u(y_l) of N comparisons under K models;
    ``users``: (N,) dense user ids.
    """
    if margins.dim() != 2 or margins.shape[0] != users.shape[0]:
        raise ValueError(
            f"maxmin: margins must be (N, K) with N = len(users) = {users.shape[0]}, got {tuple(margins.shape)}."
        )
    if num_users is None:
        num_users = int(users.max()) + 1 if users.numel() else 0
    ll = F.logsigmoid(margins.to(torch.float64))
    return torch.zeros(num_users, margins.shape[1], dtype=torch.float64, device=margins.device).index_add_(0, users, ll)


def e_step(margins: Tensor, users, num_users: int | None = None) -> tuple[Tensor, Tensor]:
    """Hard E-step: (assignment (num_users,) int64, log-likelihood (num_users, K)).

    ``users`` may be any labels (factorised densely, in sorted / first-appearance order). Ties go
    to the lowest model index.
    """
    ids, n, _ = factorize(users)
    ll = bt_log_likelihood(margins, ids.to(margins.device), n if num_users is None else num_users)
    return ll.argmax(dim=1), ll


@dataclass
class RewardMixture:
    """The result of ``fit_reward_mixture``: linear reward models ``theta`` (K, D), the users'
    cluster ``assignment`` (num_users,), the final per-user log-likelihood (num_users, K), the
    number of EM iterations run and whether the assignment converged."""

    theta: Tensor
    assignment: Tensor
    log_likelihood: Tensor
    iterations: int
    converged: bool

    def rewards(self, features: Tensor) -> Tensor:
        """Rewards of responses with features (M, D) under every model: (M, K)."""
        return features.to(self.theta.dtype) @ self.theta.T


def fit_reward_mixture(
    diffs: Tensor,
    users,
    num_models: int,
    *,
    iters: int = 20,
    m_steps: int = 200,
    lr: float = 0.5,
    l2: float = 1e-3,
    seed: int = 0,
    init: Tensor | None = None,
) -> RewardMixture:
    """EM for a mixture of ``num_models`` linear BT reward models.

    ``diffs``: (N, D) feature differences f(y_w) − f(y_l) of N comparisons; ``users``: (N,) user
    labels. Each M-step refits every model on its users' comparisons by ``m_steps`` full-batch
    gradient steps (all K models at once), minimising the mean BT NLL + ``l2``·‖θ_u‖². A model
    with no users keeps its previous θ (spec §4). Initial θ: ``init`` or N(0, 1) with ``seed``.
    Stops when the assignment no longer changes.
    """
    if num_models < 1:
        raise ValueError(f"fit_reward_mixture: num_models={num_models}; pass K >= 1.")
    d = torch.as_tensor(diffs, dtype=torch.float64)
    if d.dim() != 2:
        raise ValueError(f"fit_reward_mixture: diffs must be (N, D), got {tuple(d.shape)}.")
    ids, n_users, _ = factorize(users)
    if ids.shape[0] != d.shape[0]:
        raise ValueError(f"fit_reward_mixture: {ids.shape[0]} user labels for {d.shape[0]} comparisons.")
    if init is not None:
        theta = torch.as_tensor(init, dtype=torch.float64).clone()
    else:
        theta = torch.randn(num_models, d.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assign = torch.full((n_users,), -1, dtype=torch.int64)
    converged = False
    it = 0
    for it in range(1, iters + 1):  # EM iterations (a handful)
        new, _ = e_step(d @ theta.T, ids, n_users)
        converged = bool(torch.equal(new, assign))
        assign = new
        if converged:
            break
        theta = _m_step(d, assign[ids], theta, m_steps=m_steps, lr=lr, l2=l2)
    _, ll = e_step(d @ theta.T, ids, n_users)
    return RewardMixture(theta=theta, assignment=assign, log_likelihood=ll, iterations=it, converged=converged)


def _m_step(d: Tensor, row_model: Tensor, theta: Tensor, *, m_steps: int, lr: float, l2: float) -> Tensor:
    """Gradient descent on every model's mean BT NLL + l2·‖θ‖² at once (closed-form gradient:
    ∇_θu = −mean_{n∈u} (1 − σ(θ_u·d_n))·d_n + 2·l2·θ_u); unused models keep their θ."""
    K = theta.shape[0]
    onehot = F.one_hot(row_model, K).to(torch.float64)  # (N, K)
    count = onehot.sum(0)
    used = count > 0
    w = onehot / count.clamp_min(1.0)
    th = theta.clone()
    for _ in range(m_steps):  # optimiser steps, not rows
        resid = torch.sigmoid(-(d @ th.T)) * w  # (N, K): (1 − σ(margin)) weighted per model
        grad = -(resid.T @ d) + 2.0 * l2 * th
        th = th - lr * grad
    return torch.where(used.unsqueeze(1), th, theta)

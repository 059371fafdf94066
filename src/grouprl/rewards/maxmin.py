"""MaxMin-RLHF's reward mixture (Algorithm 1), arXiv:2402.08925: EM over K reward models.

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

import warnings
from dataclasses import dataclass, replace

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
    number of EM iterations run and whether the assignment converged; ``objective`` is the hard-EM
    log-likelihood Σ_h log Π w(φ_{u(h)}) of the kept restart, ``restart_objectives`` that of every
    restart, ``reseeds`` the number of empty-cluster re-seeds of the kept restart and ``empty`` the
    clusters that still have no user at the end."""

    theta: Tensor
    assignment: Tensor
    log_likelihood: Tensor
    iterations: int
    converged: bool
    objective: float = float("nan")
    restart_objectives: tuple[float, ...] = ()
    best_restart: int = 0
    reseeds: int = 0
    empty: tuple[int, ...] = ()

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
    restarts: int = 1,
    reseed_empty: bool = True,
) -> RewardMixture:
    """EM for a mixture of ``num_models`` linear BT reward models (arXiv:2402.08925, Algorithm 1).

    ``diffs``: (N, D) feature differences f(y_w) − f(y_l) of N comparisons; ``users``: (N,) user
    labels. Each M-step refits every model on its users' comparisons by ``m_steps`` full-batch
    gradient steps (all K models at once), minimising the mean BT NLL + ``l2``·‖θ_u‖². Initial θ:
    ``init`` or N(0, 1) with ``seed`` (restart r uses ``seed + r``). Stops when the assignment no
    longer changes.

    Empty clusters (the paper is silent: keep φ_u, or re-seed it). With ``reseed_empty`` (default) a cluster
    left without users by an E-step is re-seeded with the user that its current model explains
    worst (lowest mean log-likelihood per comparison, taken from a cluster that keeps at least one
    user), so that the M-step refits it on that user's data; without it the cluster keeps its θ.
    ``restarts``: independent EM runs (seeds ``seed``, ``seed + 1``, ...; ``init`` only for the
    first); the one with the highest hard-EM log-likelihood is kept. A cluster still empty at the
    end (e.g. fewer users than K) is reported in ``empty`` and warned about.
    """
    if num_models < 1:
        raise ValueError(f"fit_reward_mixture: num_models={num_models}; pass K >= 1.")
    if restarts < 1:
        raise ValueError(f"fit_reward_mixture: restarts={restarts}; pass restarts >= 1.")
    d = torch.as_tensor(diffs, dtype=torch.float64)
    if d.dim() != 2:
        raise ValueError(f"fit_reward_mixture: diffs must be (N, D), got {tuple(d.shape)}.")
    ids, n_users, _ = factorize(users)
    if ids.shape[0] != d.shape[0]:
        raise ValueError(f"fit_reward_mixture: {ids.shape[0]} user labels for {d.shape[0]} comparisons.")
    n_cmp = torch.zeros(n_users, dtype=torch.float64).index_add_(0, ids, torch.ones(ids.shape[0], dtype=torch.float64))
    best: RewardMixture | None = None
    objectives = []
    for r in range(restarts):  # a handful of independent EM runs
        if init is not None and r == 0:
            theta = torch.as_tensor(init, dtype=torch.float64).clone()
            if theta.shape != (num_models, d.shape[1]):
                raise ValueError(f"fit_reward_mixture: init must be (K, D) = ({num_models}, {d.shape[1]}), got {tuple(theta.shape)}.")
        else:
            g = torch.Generator().manual_seed(seed + r)
            theta = torch.randn(num_models, d.shape[1], generator=g, dtype=torch.float64)
        fit = _em(d, ids, n_users, n_cmp, theta, iters=iters, m_steps=m_steps, lr=lr, l2=l2, reseed=reseed_empty)
        objectives.append(fit.objective)
        if best is None or fit.objective > best.objective:
            best = replace(fit, best_restart=r)
    assert best is not None
    best = replace(best, restart_objectives=tuple(objectives))
    if best.empty:
        warnings.warn(
            f"fit_reward_mixture: cluster(s) {list(best.empty)} of K={num_models} ended with no users "
            f"({n_users} users); their reward models are not fitted to anyone. Lower K or add users.",
            stacklevel=2,
        )
    return best


def _em(d: Tensor, ids: Tensor, n_users: int, n_cmp: Tensor, theta: Tensor, *, iters: int, m_steps: int,
        lr: float, l2: float, reseed: bool) -> RewardMixture:
    """One EM run from ``theta`` (see ``fit_reward_mixture``)."""
    K = theta.shape[0]
    assign = torch.full((n_users,), -1, dtype=torch.int64)
    converged = False
    reseeds = 0
    it = 0
    for it in range(1, iters + 1):  # EM iterations (a handful)
        new, ll = e_step(d @ theta.T, ids, n_users)
        if reseed:
            new, n = _reseed_empty(new, ll, n_cmp, K)
            reseeds += n
        converged = bool(torch.equal(new, assign))
        assign = new
        if converged:
            break
        theta = _m_step(d, assign[ids], theta, m_steps=m_steps, lr=lr, l2=l2)
    ll = bt_log_likelihood(d @ theta.T, ids, n_users)
    objective = float(ll.gather(1, assign[:, None]).sum()) if n_users else 0.0
    counts = torch.bincount(assign, minlength=K)
    empty = tuple(int(k) for k in (counts == 0).nonzero().flatten())
    return RewardMixture(theta=theta, assignment=assign, log_likelihood=ll, iterations=it, converged=converged,
                         objective=objective, reseeds=reseeds, empty=empty)


def _reseed_empty(assign: Tensor, ll: Tensor, n_cmp: Tensor, K: int) -> tuple[Tensor, int]:
    """Give each empty cluster the user worst explained by its own cluster (mean log-likelihood per
    comparison), taken from a cluster with at least two users; returns (assignment, re-seeds)."""
    assign = assign.clone()
    fit = ll.gather(1, assign[:, None]).squeeze(1) / n_cmp.clamp_min(1.0)
    n = 0
    for k in range(K):  # clusters, not rows
        counts = torch.bincount(assign, minlength=K)
        if counts[k] > 0:
            continue
        movable = counts[assign] >= 2
        if not bool(movable.any()):
            break  # fewer users than clusters
        h = int(torch.where(movable, fit, torch.inf).argmin())
        assign[h] = k
        fit[h] = torch.inf
        n += 1
    return assign, n


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

"""Parity with verl 0.9.1's estimators (``verl.trainer.ppo.core_algos``) on random ragged batches.

Skipped unless verl imports (it needs ray, tensordict, omegaconf, codetiming, orjson besides
torch). Compared on trained tokens only, to 1e-5. verl's outcome estimators read the scalar reward
as the sum of ``token_level_rewards``, which carry it on the last trained token.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import require
import torch

core_algos = require("verl.trainer.ppo.core_algos")

from grouprl import Rollouts, compute_advantages  # noqa: E402
from grouprl.advantages.gae import gae_with_returns  # noqa: E402


def ragged(seed: int, *, gaps: bool = False, T: int = 12, binary_only: bool = False):
    """Shuffled rows with uuid-like string labels, group sizes 1..6, rewards 0/1 or continuous
    (verl and grouprl agree on constant groups only for dyadic values, see the last test)."""
    rng = random.Random(seed)
    rows = []
    for g in range(rng.randint(3, 9)):
        n = rng.randint(1, 6)
        binary = binary_only or rng.random() < 0.5
        for _ in range(n):
            r = float(rng.random() < 0.5) if binary else rng.uniform(-2, 2)
            L = rng.randint(1, T)
            if gaps:
                start = rng.randint(0, T - L)
                m = [int(start <= t < start + L and (t in (start, start + L - 1) or rng.random() < 0.7)) for t in range(T)]
            else:
                m = [1] * L + [0] * (T - L)
            rows.append((f"uid-{g:04x}-{seed}", r, m))
    rng.shuffle(rows)
    B = len(rows)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.tensor([x[2] for x in rows], dtype=torch.float32)
    rewards = torch.tensor([x[1] for x in rows], dtype=torch.float32)
    last = (T - 1) - mask.flip(1).argmax(1)
    tlr = torch.zeros(B, T).scatter_(1, last.unsqueeze(1), rewards.unsqueeze(1))
    return SimpleNamespace(
        index=np.array([x[0] for x in rows], dtype=object),
        rewards=rewards,
        mask=mask,
        tlr=tlr,
        values=torch.randn(B, T, generator=gen),
        old_lp=-torch.rand(B, T, generator=gen) * 3,
        sum_pi_sq=torch.rand(B, T, generator=gen),
        baselines=torch.rand(B, generator=gen),
    )


def ours(d, **extra) -> Rollouts:
    return Rollouts(rewards=d.rewards, group=list(d.index), mask=d.mask, **extra)


def same(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, atol: float = 1e-5) -> None:
    m = mask.bool()
    diff = (a[m].double() - b[m].double()).abs().max().item()
    assert diff <= atol, f"max |diff| on trained tokens = {diff}"


SEEDS = range(8)


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_rloo_rpp_baseline_opo_gpg(seed):
    d = ragged(seed)
    b = ours(d)
    v, _ = core_algos.compute_grpo_outcome_advantage(d.tlr.clone(), d.mask, d.index)
    same(compute_advantages("grpo", b, singleton="raw"), v, d.mask)
    v, _ = core_algos.compute_grpo_outcome_advantage(d.tlr.clone(), d.mask, d.index, norm_adv_by_std_in_grpo=False)
    same(compute_advantages("dr_grpo", b, singleton="raw"), v, d.mask)
    v, _ = core_algos.compute_rloo_outcome_advantage(d.tlr.clone(), d.mask, d.index)
    same(compute_advantages("rloo", b, singleton="raw"), v, d.mask)
    v, _ = core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage(d.tlr.clone(), d.mask, d.index)
    same(compute_advantages("reinforce_pp_baseline", b, singleton="raw"), v, d.mask)
    v, _ = core_algos.compute_opo_outcome_advantage(d.tlr.clone(), d.mask, d.index)
    same(compute_advantages("opo", b, singleton="raw"), v, d.mask)
    v, _ = core_algos.compute_gpg_outcome_advantage(d.tlr.clone(), d.mask, d.index)
    same(compute_advantages("gpg", b, singleton="raw"), v, d.mask, atol=1e-4)  # alpha up to ~B


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_passk_without_singletons(seed):
    d = ragged(seed)
    counts = {u: list(d.index).count(u) for u in set(d.index)}
    keep = torch.tensor([counts[u] > 1 for u in d.index])
    d = SimpleNamespace(**{k: (v[keep.numpy()] if isinstance(v, np.ndarray) else v[keep]) for k, v in vars(d).items()})
    b = ours(d)
    for scale in (True, False):
        v, _ = core_algos.compute_grpo_passk_outcome_advantage(
            d.tlr.clone(), d.mask, d.index, config={"norm_adv_by_std_in_grpo": scale}
        )
        same(compute_advantages("grpo_passk", b, scale=scale, singleton="raise"), v, d.mask)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gaps", [False, True])
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.5)])
@pytest.mark.parametrize("T", [12, 300])
def test_gae(seed, gaps, gamma, lam, T):
    d = ragged(seed, gaps=gaps, T=T)
    b = ours(d, values=d.values)
    adv_v, ret_v = core_algos.compute_gae_advantage_return(d.tlr, d.values, d.mask, gamma, lam)
    adv, ret = gae_with_returns(b, gamma=gamma, lam=lam)
    same(adv, adv_v, d.mask)
    same(ret, ret_v, d.mask)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gaps", [False, True])
def test_reinforce_pp_and_remax_with_token_rewards(seed, gaps):
    d = ragged(seed, gaps=gaps)
    gen = torch.Generator().manual_seed(100 + seed)
    tok = torch.randn(d.mask.shape, generator=gen) * (torch.rand(d.mask.shape, generator=gen) < 0.3)
    b = ours(d, token_rewards=tok, reward_baselines=d.baselines)
    for gamma in (1.0, 0.95):
        _, ret_v = core_algos.compute_reinforce_plus_plus_outcome_advantage(tok, d.mask, config=SimpleNamespace(gamma=gamma))
        adv_v = core_algos.compute_reinforce_plus_plus_outcome_advantage(tok, d.mask, config=SimpleNamespace(gamma=gamma))[0]
        same(compute_advantages("reinforce_pp", b, gamma=gamma), adv_v, d.mask)
        same(compute_advantages("reinforce_pp", b, gamma=gamma, whiten=False), ret_v, d.mask)
    adv_v, _ = core_algos.compute_remax_outcome_advantage(tok, d.baselines, d.mask)
    same(compute_advantages("remax", b), adv_v, d.mask)


@pytest.mark.parametrize("seed", SEEDS)
def test_gdpo_single_component_and_optimal_token_baseline(seed):
    d = ragged(seed)
    b = ours(d, reward_components=d.rewards.unsqueeze(1), old_logprobs=d.old_lp, extras={"sum_pi_squared": d.sum_pi_sq})
    v, _ = core_algos.compute_gdpo_outcome_advantage(d.tlr.clone(), d.mask, d.index)
    same(compute_advantages("gdpo", b, singleton="raw"), v, d.mask)
    for tail in (True, False):
        v, _ = core_algos.compute_optimal_token_baseline_advantage(
            d.tlr, d.mask, d.index, d.old_lp, d.sum_pi_sq, handle_zero_tail=tail
        )
        same(compute_advantages("optimal_token_baseline", b, handle_zero_tail=tail), v, d.mask)


def test_deliberate_difference_constant_non_dyadic_group():
    """Where we differ on purpose: eight identical rewards of 0.7. verl's float32 mean is an ulp
    off 0.7 and 1/(0 + 1e-6) amplifies it (|A| ~ 0.056); grouprl detects the constant group
    (max == min) and returns exactly 0. verl's RLOO leaves an ulp-level residue (1.2e-7 here)."""
    B, T = 8, 3
    mask = torch.ones(B, T)
    tlr = torch.zeros(B, T)
    tlr[:, -1] = 0.7
    index = np.array(["same-prompt"] * B, dtype=object)
    verl_adv, _ = core_algos.compute_grpo_outcome_advantage(tlr, mask, index)
    assert verl_adv.abs().max().item() > 1e-3
    b = Rollouts(rewards=[0.7] * B, group=[0] * B, mask=mask)
    assert torch.equal(compute_advantages("grpo", b), torch.zeros(B, T))
    verl_rloo, _ = core_algos.compute_rloo_outcome_advantage(tlr.clone(), mask, index)
    ours_rloo = compute_advantages("rloo", b)
    assert torch.equal(ours_rloo, torch.zeros(B, T))
    assert 0.0 < verl_rloo.abs().max().item() < 1e-6

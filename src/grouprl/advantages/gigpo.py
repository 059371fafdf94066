"""GiGPO: Group-in-Group Policy Optimization, arXiv:2505.10978 (Eq. 3 episode advantage, Eq. 5 step
return, Eq. 6-8 anchor-state groups and the combined advantage), and the step machinery of agent batches.

Agent batches have one row per environment *step* (one LLM turn). The row fields used here:

* ``group``: the episode group (environments reset with the same seed / task);
* ``trajectory``: the trajectory label (may restart at 0 in every group: rows are identified by the
  pair (group, trajectory));
* ``step``: the step index inside the trajectory (only the order matters; gaps are allowed);
* ``step_rewards``: the environment reward of that step;
* ``state_key``: an int64 hash of the anchor state the action was decided in (``state_keys``);
* ``rewards``: the trajectory's episode return, written on every step row;
* ``extras["invalid_action"]``: optional 0/1 flag per row.

Helpers shared by the agent estimators (SALT, MARS, ReAd) live here too: ``state_keys`` (canonical,
process-stable hashing of observations), ``similarity_keys`` (greedy text clustering),
``combine_ids`` (dense ids of tuples of id columns), ``order_in_sequence`` and
``discounted_returns`` (segmented reverse discounted sums, one vectorised pass).
"""

from __future__ import annotations

import difflib
import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..core import Rollouts, group_stats, reverse_discounted_cumsum
from ._common import SINGLETON_CHOICES
from .registry import estimator

__all__ = [
    "gigpo",
    "gigpo_terms",
    "GiGPOTerms",
    "state_keys",
    "similarity_keys",
    "canonical_bytes",
    "combine_ids",
    "order_in_sequence",
    "discounted_returns",
]

MODES = ("mean_norm", "mean_std_norm")
EPISODE_STATS = ("trajectory", "row")


# --------------------------------------------------------------------------- hashing of states
def canonical_bytes(obj: Any) -> bytes:
    """A canonical, type-tagged byte encoding of an observation (stable across processes).

    str/bytes/bool/int/float/None, lists and tuples (the same encoding, as verl-agent turns lists into
    tuples), dicts (items sorted by the encoding of their keys), numpy arrays and torch tensors
    (dtype, shape and raw bytes), numpy scalars. Anything else raises ``TypeError``.
    """
    if isinstance(obj, str):
        b = obj.encode("utf-8")
        return b"s" + struct.pack("<q", len(b)) + b
    if isinstance(obj, (bytes, bytearray)):
        return b"y" + struct.pack("<q", len(obj)) + bytes(obj)
    if obj is None:
        return b"n"
    if isinstance(obj, (bool, np.bool_)):
        return b"b1" if obj else b"b0"
    if isinstance(obj, (int, np.integer)):
        s = str(int(obj)).encode()
        return b"i" + struct.pack("<q", len(s)) + s
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return b"f" + (b"nan" if v != v else struct.pack("<d", v + 0.0))  # -0.0 -> 0.0
    if isinstance(obj, (list, tuple)):
        return b"l" + struct.pack("<q", len(obj)) + b"".join(canonical_bytes(x) for x in obj)
    if isinstance(obj, dict):
        items = sorted((canonical_bytes(k), canonical_bytes(v)) for k, v in obj.items())
        return b"d" + struct.pack("<q", len(items)) + b"".join(k + v for k, v in items)
    if isinstance(obj, Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return b"L" + struct.pack("<q", obj.ndim) + canonical_bytes(obj.tolist())
        a = np.ascontiguousarray(obj)
        head = f"{a.dtype.str}|{a.shape}".encode()
        return b"a" + struct.pack("<q", len(head)) + head + a.tobytes()
    raise TypeError(f"cannot hash an observation of type {type(obj).__name__}")


def _hash64(b: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little", signed=True)


def state_keys(observations: Sequence[Any]) -> Tensor:
    """int64 anchor-state keys: blake2b (8 bytes) of a canonical encoding of each observation.

    Equal observations get equal keys, in every process (Python's salted ``hash()`` is not used).
    Call it once per batch on the raw observation each action was decided in (no history, no prompt
    template). This is the only per-row Python work of the agent estimators.
    """
    out = np.empty(len(observations), dtype=np.int64)
    for i, obs in enumerate(observations):
        try:
            out[i] = _hash64(canonical_bytes(obs))
        except TypeError as exc:
            raise ValueError(
                f"state_keys: observation {i} has type {type(obs).__name__}, which cannot be hashed "
                "canonically; pass text, numbers, lists/tuples/dicts of them, or arrays."
            ) from exc
    return torch.from_numpy(out)


def similarity_keys(
    observations: Sequence[str], groups: Sequence[Any] | Tensor | None = None, *, threshold: float = 0.95
) -> Tensor:
    """Anchor-state keys by text similarity (verl-agent's ``enable_similarity``), slower than exact keys.

    Inside each episode group, in order of appearance, an observation joins the first cluster whose
    representative (its first member) has a ``difflib.SequenceMatcher`` ratio >= ``threshold``;
    otherwise it opens a new cluster. A cluster's key is ``state_keys`` of its representative.
    This is pairwise: O(rows × clusters) string comparisons, in Python. Use exact ``state_keys``
    unless observations differ by noise.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"similarity_keys: threshold={threshold}; it must be in (0, 1) (verl-agent: 0.95).")
    n = len(observations)
    if groups is None:
        gids = [0] * n
    else:
        gids = groups.tolist() if isinstance(groups, Tensor) else list(groups)
        if len(gids) != n:
            raise ValueError(f"similarity_keys: {len(gids)} group labels for {n} observations.")
    reps: dict[Any, list[int]] = {}
    rep_of = np.empty(n, dtype=np.int64)
    for i, (obs, g) in enumerate(zip(observations, gids)):
        if not isinstance(obs, str):
            raise ValueError(f"similarity_keys: observation {i} is {type(obs).__name__}; pass text.")
        clusters = reps.setdefault(g, [])
        for r in clusters:
            if difflib.SequenceMatcher(None, observations[r], obs).ratio() >= threshold:
                rep_of[i] = r
                break
        else:
            clusters.append(i)
            rep_of[i] = i
    keys = state_keys([observations[r] for r in sorted(set(rep_of.tolist()))])
    lookup = dict(zip(sorted(set(rep_of.tolist())), keys.tolist()))
    return torch.tensor([lookup[r] for r in rep_of.tolist()], dtype=torch.int64)


# --------------------------------------------------------------------------- sequence machinery
def combine_ids(*columns: Tensor) -> tuple[Tensor, int]:
    """Dense int64 ids of the tuples (columns[0][i], columns[1][i], ...).

    Folds the columns left to right: ids of the prefix tuple × (distinct values of the next column)
    + the next column's ids, re-densified by a 1-D ``torch.unique`` (much faster than
    ``torch.unique(dim=0)``). Ids are ordered lexicographically by the tuples' values.
    """
    uniq, ids = torch.unique(columns[0], return_inverse=True)
    n = int(uniq.numel())
    for col in columns[1:]:
        u, inv = torch.unique(col, return_inverse=True)
        uniq, ids = torch.unique(ids * int(u.numel()) + inv, return_inverse=True)
        n = int(uniq.numel())
    return ids, n


def order_in_sequence(
    seq: Tensor, step: Tensor, who: str, what: tuple[str, str] = ("trajectory", "step")
) -> tuple[Tensor, Tensor]:
    """Sort rows by (sequence, step); return ``(perm, position)``: the sorted order and each row's
    0-based rank inside its sequence. Two rows with the same (sequence, step) raise ``ValueError``."""
    B = seq.shape[0]
    p1 = torch.argsort(step, stable=True)
    perm = p1[torch.argsort(seq[p1], stable=True)]
    s_seq, s_step = seq[perm], step[perm]
    dup = (s_seq[1:] == s_seq[:-1]) & (s_step[1:] == s_step[:-1])
    if bool(dup.any()):
        j = int(dup.nonzero()[0, 0])
        a, b = sorted((int(perm[j]), int(perm[j + 1])))
        fix = (
            "every step of a trajectory must be one row (give each trajectory its own label within its group)"
            if what == ("trajectory", "step")
            else f"each {what[1]} may appear once per {what[0]}"
        )
        raise ValueError(f"{who}: rows {a} and {b} have the same {what[0]} and {what[1]} ({int(s_step[j])}); {fix}.")
    idx = torch.arange(B, device=seq.device)
    new_seq = torch.ones(B, dtype=torch.bool, device=seq.device)
    new_seq[1:] = s_seq[1:] != s_seq[:-1]
    start = torch.cummax(torch.where(new_seq, idx, torch.zeros_like(idx)), dim=0).values
    position = torch.empty_like(idx)
    position[perm] = idx - start
    return perm, position


def discounted_returns(values: Tensor, seq: Tensor, position: Tensor, gamma: float) -> Tensor:
    """R_t = Σ_{k>=t} γ^{k−t} v_k over each sequence's rows in step order (float64), vectorised:
    rows are scattered into a (sequences, max length) matrix and reduced by the core's chunked
    ``reverse_discounted_cumsum``. Memory: sequences × the longest sequence, in float64."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"discount gamma={gamma}; it must be in [0, 1].")
    n_seq = int(seq.max()) + 1
    L = int(position.max()) + 1
    mat = torch.zeros(n_seq, L, dtype=torch.float64, device=values.device)
    mat[seq, position] = values.to(torch.float64)
    return reverse_discounted_cumsum(mat, gamma)[seq, position]


def _row_flag(batch: Rollouts, name: str, who: str) -> Tensor | None:
    if name not in batch.extras:
        return None
    f = batch.extras[name]
    if f.dim() != 1:
        raise ValueError(f"{who}: extras[{name!r}] must have shape (B,), got {tuple(f.shape)}.")
    if f.dtype != torch.bool:
        bad = (f != 0) & (f != 1)
        if bool(bad.any()):
            r = int(bad.nonzero()[0, 0])
            raise ValueError(f"{who}: extras[{name!r}] row {r} is {f[r].item()}; pass 0/1 or bool flags.")
    return f.to(torch.float64)


# --------------------------------------------------------------------------- GiGPO
@dataclass(frozen=True)
class GiGPOTerms:
    """The two GiGPO terms per row (float64) and the step grouping, for diagnostics and SALT."""

    episode: Tensor
    step: Tensor
    step_returns: Tensor
    step_group: Tensor
    num_step_groups: int

    def combined(self, omega: float) -> Tensor:
        return self.episode + omega * self.step


def gigpo_terms(
    batch: Rollouts,
    *,
    gamma: float = 0.95,
    mode: str = "mean_std_norm",
    episode_stats: str = "trajectory",
    eps: float = 1e-6,
    ddof: int = 1,
    invalid_penalty: float = 0.1,
    normalize_by_length: bool = False,
    singleton: str = "zero",
) -> GiGPOTerms:
    """The episode term A^E and the step term A^S of GiGPO (see ``gigpo``)."""
    who = "gigpo"
    if mode not in MODES:
        raise ValueError(f"{who}: mode={mode!r}; choose one of {MODES}")
    if episode_stats not in EPISODE_STATS:
        raise ValueError(f"{who}: episode_stats={episode_stats!r}; choose one of {EPISODE_STATS}")
    if singleton not in SINGLETON_CHOICES:
        raise ValueError(f"{who}: singleton={singleton!r}; choose one of {SINGLETON_CHOICES}")
    for name in ("trajectory", "step", "step_rewards", "state_key"):
        if not batch.has(name):
            raise ValueError(f"{who}: the batch has no {name!r}; agent batches need one row per step with it.")
    g = batch.group
    traj, n_traj = combine_ids(g, batch.trajectory)
    _, position = order_in_sequence(traj, batch.step, who)
    invalid = _row_flag(batch, "invalid_action", who)
    penalty = torch.zeros(len(batch), dtype=torch.float64, device=g.device)
    if invalid is not None:
        penalty = invalid * invalid_penalty

    # Episode score per row: the trajectory's return (optionally per step), minus the row's penalty.
    episode_return = batch.rewards.to(torch.float64)
    tst = group_stats(episode_return, traj, n_traj, ddof=0)
    if episode_stats == "trajectory" and not bool(tst.constant.all()):
        t = int((~tst.rows(tst.constant)).nonzero()[0, 0])
        raise ValueError(
            f"{who}: row {t}: rewards differ between the rows of its trajectory; write the episode "
            "return on every step row (per-step rewards go in step_rewards), or use episode_stats='row'."
        )
    if normalize_by_length:
        episode_return = episode_return / tst.rows(tst.count).to(torch.float64)
    score = episode_return - penalty

    if episode_stats == "row":  # reference code: every step row counts (longer trajectories weigh more)
        est = group_stats(score, g, batch.num_groups, ddof=ddof)
        a_ep = est.centered(score)
        std_rows = est.rows(est.std)
        single = est.rows(est.singleton)
    else:  # paper, Eq. 3: one value per trajectory
        traj_group = torch.zeros(n_traj, dtype=torch.int64, device=g.device).index_put_((traj,), g)
        traj_value = torch.zeros(n_traj, dtype=torch.float64, device=g.device).index_put_((traj,), episode_return)
        est = group_stats(traj_value, traj_group, batch.num_groups, ddof=ddof)
        a_ep = est.centered(traj_value)[traj]
        std_rows = est.std[g]
        single = est.singleton[g]
    if mode == "mean_std_norm":
        a_ep = a_ep / (std_rows + eps)
    if episode_stats == "trajectory":
        a_ep = a_ep - penalty  # after normalisation: a std of 0 must not amplify it (proposed reading)
    if singleton == "raise" and bool(single.any()):
        r = int(single.nonzero()[0, 0])
        raise ValueError(
            f"{who}: row {r} is alone in its episode group; roll out >= 2 trajectories per task, "
            "or pass singleton='zero' or 'raw'."
        )
    # Reference code: a one-member episode group has mean 0 and std 1, so A^E = the raw score.
    a_ep = torch.where(single, score if singleton == "raw" else torch.zeros_like(score), a_ep)

    # Step term (Eq. 5-7): discounted returns, penalty after discounting, anchor-state groups.
    returns = discounted_returns(batch.step_rewards, traj, position, gamma) - penalty
    sg, n_sg = combine_ids(g, batch.state_key)
    sst = group_stats(returns, sg, n_sg, ddof=ddof)
    a_st = sst.centered(returns)  # exactly 0 for a one-member step group
    if mode == "mean_std_norm":
        a_st = a_st / (sst.rows(sst.std) + eps)
    return GiGPOTerms(episode=a_ep, step=a_st, step_returns=returns, step_group=sg, num_step_groups=n_sg)


@estimator(
    "gigpo",
    needs=("rewards", "group", "mask", "trajectory", "step", "step_rewards", "state_key"),
    paper="Group-in-Group Policy Optimization for LLM Agent Training, arXiv:2505.10978",
    level="step",
    example={
        "rewards": [10, 10, 10, 10, 10, 0, 0, 0],
        "group": [0] * 8,
        "trajectory": [0, 0, 1, 1, 1, 2, 2, 2],
        "step": [0, 1, 0, 1, 2, 0, 1, 2],
        "step_rewards": [0, 10, 0, 0, 10, 0, 0, 0],
        "state_key": [0, 1, 0, 3, 1, 0, 3, 3],
        "kwargs": {"mode": "mean_norm", "episode_stats": "row"},
    },
)
def gigpo(
    batch: Rollouts,
    *,
    omega: float = 1.0,
    gamma: float = 0.95,
    mode: str = "mean_std_norm",
    episode_stats: str = "trajectory",
    eps: float = 1e-6,
    ddof: int = 1,
    invalid_penalty: float = 0.1,
    normalize_by_length: bool = False,
    singleton: str = "zero",
) -> Tensor:
    """GiGPO (Feng et al., arXiv:2505.10978): episode advantage plus anchor-state step advantage.

    A(a_t^(i)) = A^E(τ_i) + ω·A^S(a_t^(i))                                  (Eq. 8)
    A^E(τ_i)   = (R(τ_i) − mean_j R(τ_j)) / F_norm,  over the episode group    (Eq. 3)
    R_t^(i)    = Σ_{k>=t} γ^{k−t} r_k^(i)                                       (Eq. 5)
    A^S        = (R_t^(i) − mean over G^S(s̃)) / F_norm,  G^S(s̃) = the steps of the episode group
                 whose anchor state is s̃ (any trajectory, any time)          (Eq. 6-7)

    F_norm = std + ε (``mode="mean_std_norm"``, the paper's runs; unbiased std with ``ddof=1``) or 1
    (``"mean_norm"``, verl-agent's yaml default). ``γ`` defaults to the paper's 0.95 (yaml: 1.0).

    ``episode_stats``: ``"trajectory"`` (paper: one value per trajectory) or ``"row"`` (verl-agent's
    default ``compute_mean_std_cross_steps``: statistics over step rows, longer trajectories weigh
    more). ``rewards`` must hold the episode return on every row of the trajectory.

    Invalid actions (``extras["invalid_action"]``): the reference code subtracts
    ``invalid_penalty`` (0.1 in its run scripts) from that row's episode score and its step return,
    after discounting (``episode_stats="row"`` reproduces this exactly). With
    ``episode_stats="trajectory"`` the statistics use the un-penalised trajectory returns and the
    penalty is subtracted from the flagged row's A^E after normalisation, so that a group whose
    returns are all equal (std 0) does not turn 0.1 into 0.1/ε (proposed reading). Set
    ``invalid_penalty=0`` to disable it.

    Groups of one: a step group with one member gives A^S = 0. An episode group with one member
    (one row, or one trajectory with ``episode_stats="trajectory"``) gives A^E = 0 by default, the
    raw score with ``singleton="raw"`` (reference code), or an error with ``"raise"``.
    Anchor states are exact ``state_key`` matches within the group; for similarity grouping build
    the keys with ``similarity_keys``.
    """
    t = gigpo_terms(
        batch,
        gamma=gamma,
        mode=mode,
        episode_stats=episode_stats,
        eps=eps,
        ddof=ddof,
        invalid_penalty=invalid_penalty,
        normalize_by_length=normalize_by_length,
        singleton=singleton,
    )
    return t.combined(omega)

"""Token- and segment-level credit in the training loop: HAPO, SPO-chain and critic-based PPO
(GAE, or T-PPO's EGAE), selected by the config's ``credit`` (``credit_kwargs`` for their options).

The loop calls the hooks of one ``Credit`` object; the base class does nothing, so ``credit: none``
is the plain loop. Hooks, in loop order:

* ``prompts_to_draw(n, G)``    rollout: how many new prompts to draw (T-PPO: the free in-flight slots)
* ``eval_max_new_tokens(n)``   evaluation: the response length limit (T-PPO: ``max_total_tokens``)
* ``logits_processor()``      rollout: a logits processor for ``sample`` (HAPO's temperature) or None
* ``extend_rollout(gen, ctx)`` after the rollout: add rows (T-PPO's in-flight responses, continued)
* ``prepare(batch, gen, ctx)`` before the advantages: add fields (SPO's MC segment values, critic values)
* ``loss_mask(mask)``          the mask of the policy loss (SPO's probability mask)
* ``loss_kwargs(ent)``         extra policy-loss arguments (HAPO's current-policy entropies)
* ``after_update(batch, gen, ctx)`` after the policy update: critic update, HAPO statistics; metrics
* ``state_dict`` / ``load_state_dict``: saved in the checkpoints

Pair each with its estimator and loss in the config (examples/*.yaml): ``hapo`` with
``estimator: hapo_tlga, loss: hapo``; ``spo_chain`` with ``estimator: spo_chain``; ``spo_tree`` with
``estimator: spo_tree``; ``critic`` with ``estimator: gae`` or ``egae``; ``tppo`` with ``estimator: egae``
(declared: ``TppoCredit.estimator_traits``, checked when the config loads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from ..advantages.spo import (PROB_THRESHOLD, check_tree_adv_method, spo_prob_mask, spo_segment_ids, spo_segment_starts,
                             spo_tree_advantages)
from ..advantages.registry import ESTIMATORS, TRAITS
from ..advantages.registry import resolve as resolve_estimator
from ..advantages.value_targets import value_targets
from ..core import Registry, Rollouts, cap_per_group
from ..losses import normalizers, value_loss
from ..models import ValueModel
from ..rollout import Generation
from ..rollout.hapo_temperature import AdaptiveTemperature
from ..rollout.prefix import continue_from, mc_values
from ..rollout.tree import tree_rollout

#: the estimator trait of T-PPO's in-flight rows (grouprl.advantages.registry.TRAITS)
BOOTSTRAPS_TRUNCATED = "bootstraps_truncated"

__all__ = ["Credit", "CreditContext", "HapoCredit", "SpoChainCredit", "SpoTreeCredit", "CriticCredit", "TppoCredit", "CREDITS", "make_credit"]


@dataclass
class CreditContext:
    """What the hooks may use: the policy, the config, a scorer of full responses and the step's
    generator (seeded by (seed, step), so resumed runs draw the same numbers)."""

    model: torch.nn.Module
    cfg: Any
    eos_id: int
    score: Callable[[Generation], Tensor]
    generator: torch.Generator


class Credit:
    """The no-op credit (``credit: none``); subclasses override the hooks they need.

    Declarations read at config load (``check_config``): ``estimator_traits``, the traits (see
    ``grouprl.advantages.registry.TRAITS``) that every term of the configured estimator must
    declare; ``provides``, the batch fields the hook adds (an estimator's ``needs`` may use them);
    the keyword options of ``__init__`` (the names ``credit_kwargs`` may use).
    """

    needs_entropy = False
    estimator_traits: tuple[str, ...] = ()
    #: the batch fields (or extras) this hook adds before the advantages (read by the config check)
    provides: tuple[str, ...] = ()

    def __init__(self, cfg: Any, model: torch.nn.Module) -> None:
        self.cfg = cfg

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Config-load check (ValueError naming the field and the fix): the estimator declares
        ``estimator_traits`` in every term. (``credit_kwargs`` are checked against this hook's
        keywords with the other keyword dicts: ``config_checks.checked_keywords``.)"""
        have = resolve_estimator(cfg.estimator).traits
        for trait in cls.estimator_traits:
            if trait not in have:
                fits = [n for n, info in ESTIMATORS.items() if trait in info.traits]
                raise ValueError(
                    f"credit={cfg.credit!r} needs an estimator that declares {trait!r} in every term ({TRAITS[trait]}); "
                    f"estimator={cfg.estimator!r} does not. Use estimator=" + " or ".join(fits) + ".")

    def prompts_to_draw(self, prompts_per_step: int, group_size: int) -> int:
        """How many new prompts the rollout draws this step (0: none); T-PPO fills only free slots."""
        return prompts_per_step

    def eval_max_new_tokens(self, max_new_tokens: int) -> int:
        """The response length limit of the evaluation (T-PPO: ``max_total_tokens``, not one window)."""
        return max_new_tokens

    def logits_processor(self) -> Callable[[Tensor], Tensor] | None:
        return None

    def extend_rollout(self, gen: Generation, ctx: CreditContext) -> Generation:
        return gen

    def prepare(self, batch: Rollouts, gen: Generation, ctx: CreditContext) -> Rollouts:
        return batch

    def loss_mask(self, mask: Tensor) -> Tensor:
        return mask

    def loss_kwargs(self, entropy: Tensor | None) -> dict[str, Any]:
        return {}

    def after_update(self, batch: Rollouts, gen: Generation, ctx: CreditContext) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


# ---------------------------------------------------------------------------------------------
class HapoCredit(Credit):
    """HAPO: adaptive-temperature rollout (statistics of the previous batch's old-policy entropies,
    fixed T₀ = ``temperature`` on the first step) and the current policy's entropies for the ``hapo``
    loss. ``tau`` τ (0.05), ``pivot`` (0.8), ``code_compat`` (the reference code's unsigned ĥ in the
    sampler; set the loss's own ``code_compat`` in ``loss_kwargs``), ``adaptive_temperature``. With
    a loss that takes no ``token_entropy`` (e.g. ``ppo_clip``) only the sampler part is used."""

    needs_entropy = True

    def __init__(self, cfg: Any, model: torch.nn.Module, *, tau: float = 0.05, pivot: float = 0.8,
                 code_compat: bool = False, adaptive_temperature: bool = True) -> None:
        super().__init__(cfg, model)
        self.enabled = bool(adaptive_temperature)
        self.proc = AdaptiveTemperature(tau=tau, base=cfg.temperature, pivot=pivot, code_compat=code_compat)

    def logits_processor(self):
        return self.proc if self.enabled else None

    def loss_kwargs(self, entropy):
        from ..losses import LOSSES

        if "token_entropy" not in LOSSES[self.cfg.loss].defaults:  # e.g. adaptive temperature with ppo_clip
            return {}
        if entropy is None:  # pragma: no cover - the loop computes it when needs_entropy
            raise ValueError("credit 'hapo' needs the current policy's token entropies")
        return {"token_entropy": entropy.detach()}

    def after_update(self, batch, gen, ctx):
        self.proc.update(batch.entropy, batch.mask)  # old-policy entropies at T₀, for the next rollout
        return {"hapo/entropy_pivot": self.proc.stats.q, "hapo/entropy_scale": self.proc.stats.s}

    def state_dict(self):
        return self.proc.state_dict()

    def load_state_dict(self, state):
        if state:
            self.proc.load_state_dict(state)


# ---------------------------------------------------------------------------------------------
class SpoChainCredit(Credit):
    """SPO-chain: cut points from the old policy's token probabilities (every ``interval``-th token
    with p < 0.9), MC values of the cut-point prefixes from ``samples`` continuations each (within
    the rollout's length limit; scored by the task's verifier), the batch layout of the ``spo_chain``
    estimator, and the probability mask in the loss (``prob_mask``). ``unfinished_reward``: the
    reward of a continuation cut by the length limit (the reference code's "unfinished response"
    penalty; None = the verifier's score of its text)."""

    provides = ("token_probs", "segment_values", "segment_id")

    def __init__(self, cfg: Any, model: torch.nn.Module, *, interval: int = 5, samples: int = 4,
                 prob_mask: bool = True, threshold: float = PROB_THRESHOLD,
                 unfinished_reward: float | None = None) -> None:
        super().__init__(cfg, model)
        if samples < 1:
            raise ValueError(f"credit 'spo_chain': samples={samples}; need >= 1 MC continuation per cut point.")
        self.interval, self.samples, self.prob_mask, self.threshold = int(interval), int(samples), bool(prob_mask), float(threshold)
        self.unfinished_reward = unfinished_reward
        self._mask: Tensor | None = None
        self._metrics: dict[str, float] = {}

    def _score(self, ctx: CreditContext) -> Callable[[Generation], Tensor]:
        if self.unfinished_reward is None:
            return ctx.score
        penalty = float(self.unfinished_reward)

        def score(g: Generation) -> Tensor:
            r = torch.as_tensor(ctx.score(g), dtype=torch.float32)
            return torch.where(g.truncated.cpu(), torch.tensor(penalty), r)

        return score

    def prepare(self, batch, gen, ctx):
        mask = batch.mask
        assert batch.old_logprobs is not None
        probs = batch.old_logprobs.exp() * mask
        starts = spo_segment_starts(probs, mask, interval=self.interval, threshold=self.threshold)
        seg = spo_segment_ids(starts, mask)
        rows, t = starts.nonzero(as_tuple=True)
        B = mask.shape[0]
        values = torch.zeros(B, max(1, int(seg.max()) if seg.numel() else 1))
        n_rollouts = 0
        if rows.numel():
            cfg = ctx.cfg
            v, cont = mc_values(ctx.model, gen, rows, t, self._score(ctx), num_samples=self.samples, eos_id=ctx.eos_id,
                                max_new_tokens=cfg.max_new_tokens, budget=cfg.max_new_tokens - t,
                                temperature=cfg.temperature, top_p=cfg.top_p, generator=ctx.generator)
            values[rows, seg[rows, t] - 1] = v
            n_rollouts = len(cont)
        self._mask = spo_prob_mask(probs, mask, self.threshold) if self.prob_mask else None
        self._metrics = {"spo/cut_points_per_response": float(rows.numel()) / max(B, 1),
                         "spo/mc_rollouts": float(n_rollouts)}
        return batch.replace(token_probs=probs, extras={**batch.extras, "segment_id": seg, "segment_values": values})

    def loss_mask(self, mask):
        return mask if self._mask is None else self._mask

    def after_update(self, batch, gen, ctx):
        return dict(self._metrics)


class SpoTreeCredit(Credit):
    """SPO-tree: the rollout's ``group_size`` responses per prompt become depth 0 of a tree
    (``tree_rollout``: cut to ``segment_len`` tokens, then ``branch`` children per unfinished node),
    leaves are scored by the verifier, node values and edge advantages come from
    ``spo_tree_advantages`` (``adv_method``), and the step trains on the kept (non-zero) edges: one
    row per edge, at most ``max_edges`` per prompt (a random subset), the advantage on the child's
    segment only (estimator ``spo_tree``), with the probability mask in the loss (``prob_mask``).
    The reference code's on-policy replay buffer (edges reused for up to 8 iterations) is not
    implemented: each step trains on its own tree's edges."""

    provides = ("token_probs", "node_advantage", "segment_start")

    def __init__(self, cfg: Any, model: torch.nn.Module, *, branch: list[int] | tuple[int, ...] = (6, 6),
                 segment_len: int = 30, adv_method: str = "rloo", max_edges: int | None = 32,
                 prob_mask: bool = True, threshold: float = PROB_THRESHOLD) -> None:
        super().__init__(cfg, model)
        check_tree_adv_method(adv_method, "credit 'spo_tree'")
        self.branch, self.segment_len, self.adv_method = tuple(int(b) for b in branch), int(segment_len), adv_method
        self.max_edges, self.prob_mask, self.threshold = max_edges, bool(prob_mask), float(threshold)
        self._mask: Tensor | None = None
        self._metrics: dict[str, float] = {}

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        check_tree_adv_method(cfg.credit_kwargs.get("adv_method", "rloo"), "credit_kwargs.adv_method")

    def extend_rollout(self, gen, ctx):
        cfg = ctx.cfg
        tree = tree_rollout(ctx.model, gen, branch=self.branch, segment_len=self.segment_len,
                            max_new_tokens=cfg.max_new_tokens, eos_id=ctx.eos_id, temperature=cfg.temperature,
                            top_p=cfg.top_p, generator=ctx.generator)
        nodes = tree.gen
        N = len(nodes)
        rewards = torch.zeros(N, dtype=torch.float64)  # the scorer's precision (float64 values of the tree)
        leaf_rows = tree.leaf.nonzero().squeeze(1)
        rewards[leaf_rows] = torch.as_tensor(ctx.score(nodes.select(leaf_rows))).to(torch.float64)
        root_of = torch.unique(nodes.prompt_index, return_inverse=True)[1]
        n_roots = int(root_of.max()) + 1
        parent = torch.where(tree.parent < 0, N + root_of, tree.parent)
        values, adv, keep = spo_tree_advantages(torch.cat([parent, torch.full((n_roots,), -1)]),
                                                torch.cat([rewards, rewards.new_zeros(n_roots)]), adv_method=self.adv_method)
        keep = keep[:N]
        if self.max_edges is not None:
            keep = cap_per_group(keep, root_of, int(self.max_edges), ctx.generator)
        rows = keep.nonzero().squeeze(1)
        if rows.numel() == 0:  # no edge with a signal: the depth-0 nodes with advantage 0 (zero loss)
            rows = (tree.depth == 0).nonzero().squeeze(1)
        out = nodes.select(rows)
        out.rewards = values[:N][rows].to(torch.float32)
        out.failed = torch.zeros(len(out), dtype=torch.bool)
        out.texts = None
        edge_adv = torch.where(keep[rows], adv[:N][rows], torch.zeros(()))
        out.extras = {"node_advantage": edge_adv.to(torch.float32), "segment_start": tree.segment_start[rows]}
        self._metrics = {"spo_tree/nodes": float(N), "spo_tree/leaves": float(leaf_rows.numel()),
                         "spo_tree/edges_kept": float(int(keep.sum()))}
        return out

    def prepare(self, batch, gen, ctx):
        assert batch.old_logprobs is not None
        probs = batch.old_logprobs.exp() * batch.mask
        T = batch.mask.shape[1]
        seg = batch.mask & (torch.arange(T)[None, :] >= gen.extras["segment_start"][:, None])
        self._mask = spo_prob_mask(probs, seg, self.threshold) if self.prob_mask else seg
        return batch.replace(token_probs=probs, extras={**batch.extras, "node_advantage": gen.extras["node_advantage"],
                                                        "segment_start": gen.extras["segment_start"]})

    def loss_mask(self, mask):
        return mask if self._mask is None else self._mask

    def after_update(self, batch, gen, ctx):
        return dict(self._metrics)


# ---------------------------------------------------------------------------------------------
class CriticCredit(Credit):
    """Critic-based PPO: a separate value model (``ValueModel``) gives ``values`` for ``gae`` /
    ``egae``; after each policy update it is trained on its own (decoupled) with the clipped value
    loss on the critic targets (λ = ``critic_lam``, 1.0: Monte-Carlo returns).

    ``finished_only`` (default: True iff a term of the estimator declares the trait
    ``bootstraps_truncated``, as ``egae`` does): T-PPO's value-token filter —
    train the critic only on responses that ended with EOS (length-truncated responses are treated
    as in flight and bootstrapped by EGAE); the step is skipped when none finished. ``update_every``:
    critic update every N steps. ``lr``, ``epochs``, ``clip_range`` (0.2), ``gamma`` (1.0).
    """

    provides = ("values",)

    def __init__(self, cfg: Any, model: torch.nn.Module, *, lr: float = 1e-3, epochs: int = 1,
                 clip_range: float | None = 0.2, gamma: float = 1.0, critic_lam: float = 1.0,
                 finished_only: bool | None = None, update_every: int = 1) -> None:
        super().__init__(cfg, model)
        self.critic = ValueModel(model).train()
        self.optimizer = torch.optim.AdamW(self.critic.parameters(), lr=lr)
        self.epochs, self.clip_range, self.gamma, self.lam = int(epochs), clip_range, float(gamma), float(critic_lam)
        bootstraps = BOOTSTRAPS_TRUNCATED in resolve_estimator(cfg.estimator).any_traits
        self.finished_only = bootstraps if finished_only is None else bool(finished_only)
        self.update_every = max(1, int(update_every))
        self._steps = 0

    def _values(self, gen: Generation, rows: Tensor) -> Tensor:
        return self.critic(gen.prompt_ids[rows], gen.prompt_mask[rows], gen.response_ids[rows], gen.response_mask[rows])

    def prepare(self, batch, gen, ctx):
        rows = torch.arange(len(gen))
        with torch.no_grad():
            values = torch.cat([self._values(gen, mb) for mb in rows.split(ctx.cfg.micro_batch_size)])
        return batch.replace(values=values)

    def after_update(self, batch, gen, ctx):
        self._steps += 1
        if (self._steps - 1) % self.update_every:
            return {}
        returns, vmask = value_targets(batch, gamma=self.gamma, lam=self.lam, finished_only=self.finished_only)
        rows = vmask.any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return {"value/skipped": 1.0}
        norms = normalizers(vmask[rows])
        sums: dict[str, float] = {}
        for _ in range(self.epochs):
            self.optimizer.zero_grad(set_to_none=True)
            for mb in rows.split(ctx.cfg.micro_batch_size):
                v = self._values(gen, mb)
                loss, m = value_loss(v, batch.values[mb], returns[mb], vmask[mb], clip_range=self.clip_range, **norms)
                loss.backward()
                for k, x in m.items():
                    sums[k] = sums.get(k, 0.0) + float(x)
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), ctx.cfg.grad_clip if ctx.cfg.grad_clip > 0 else float("inf"))
            self.optimizer.step()
        out = {f"value/{k}": v / self.epochs for k, v in sums.items()}
        out["value/skipped"] = 0.0
        out["value/tokens"] = float(vmask.sum())
        return out

    def state_dict(self):
        return {"critic": {k: v.detach().clone() for k, v in self.critic.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "steps": self._steps}

    def load_state_dict(self, state):
        if state:
            self.critic.load_state_dict(state["critic"])
            self.optimizer.load_state_dict(state["optimizer"])
            self._steps = int(state["steps"])


class TppoCredit(CriticCredit):
    """T-PPO (arXiv:2506.15050; the rules are a proposed reading of the paper's successive batching
    and token filtering): window-truncated generation with a critic and an estimator that
    bootstraps in-flight rows (``estimator_traits``: ``egae``; refused at config load otherwise).

    Each step extends every in-flight sequence by at most one window (the config's
    ``max_new_tokens``), continued from its full prefix with ``continue_from``, and starts new
    prompts (their first window). The policy loss covers only the tokens generated in this window
    (prompt and earlier-window tokens are filtered out); EGAE bootstraps the rows still in flight.
    Options:

    * ``in_flight`` (default ``prompts_per_step × group_size``): the fixed number of sequences in
      flight — every step trains on exactly this many rows: the continued ones plus new ones in the
      slots that finished sequences freed (``ceil(free / group_size)`` prompts are drawn; the last
      prompt's surplus samples, at most ``group_size − 1``, are discarded). Fewer when the prompt
      pool (or a filtering sampler) gives fewer rows.
    * ``grow=True``: the former behaviour — ``prompts_per_step`` new prompts every step on top of
      all continued rows (the batch grows while responses stay in flight).
    * ``max_in_flight``: at most this many sequences are carried to the next step; the oldest (the
      earliest started; ties: the first rows) are dropped first.
    * ``max_total_tokens`` (default 4 windows): the response length limit (also of the
      evaluation, which generates whole responses, not one window). A response that reaches it
      without EOS is finished there: it leaves the pool, EGAE gives it its verifier reward (the
      score of its text as it stands) at its last token with terminal value 0, and it trains the
      critic. T-PPO (arXiv:2506.15050) is silent on over-long responses; this is a proposed reading (otherwise
      they would never be rewarded).

    The critic (``CriticCredit`` options) is updated as the paper's dual update states it: only on
    completed trajectories, so less often than the policy — at each step one update on the
    sequences that finished in that step (each trajectory once, all its tokens: a variable number
    of value tokens per update), none when no sequence finished (``value/skipped``).
    ``update_every`` thins this further (not in the paper).
    """

    estimator_traits = (BOOTSTRAPS_TRUNCATED,)

    def __init__(self, cfg: Any, model: torch.nn.Module, *, in_flight: int | None = None, grow: bool = False,
                 max_total_tokens: int | None = None, max_in_flight: int | None = None, **critic_kw: Any) -> None:
        critic_kw.setdefault("finished_only", True)
        super().__init__(cfg, model, **critic_kw)
        self.in_flight, self.grow, self.max_total, self.max_in_flight = self._options(
            cfg, in_flight=in_flight, grow=grow, max_total_tokens=max_total_tokens, max_in_flight=max_in_flight)
        self.pool: Generation | None = None
        self.pool_born = torch.zeros(0, dtype=torch.int64)  # the step each pooled sequence started
        self._mask: Tensor | None = None
        self._live: Tensor | None = None
        self._born = torch.zeros(0, dtype=torch.int64)
        self._n_cont = 0

    @staticmethod
    def _options(cfg: Any, *, in_flight: Any = None, grow: Any = False, max_total_tokens: Any = None,
                 max_in_flight: Any = None) -> tuple[int, bool, int, int | None]:
        def count(name: str, v: Any, low: int) -> int:
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"credit_kwargs.{name}={v!r}: expected an integer >= {low}.")
            return int(v)

        window = int(cfg.max_new_tokens)
        n = count("in_flight", in_flight, 1) if in_flight is not None else int(cfg.prompts_per_step) * int(cfg.group_size)
        if n < int(cfg.mini_batches):
            raise ValueError(f"credit_kwargs.in_flight={n} is below mini_batches={cfg.mini_batches} (every step trains on "
                             "in_flight rows); raise in_flight or lower mini_batches.")
        if not isinstance(grow, bool):
            raise ValueError(f"credit_kwargs.grow={grow!r}: expected true or false.")
        total = count("max_total_tokens", max_total_tokens, 1) if max_total_tokens is not None else 4 * window
        if total < window:
            raise ValueError(f"credit_kwargs.max_total_tokens={total} is below the window max_new_tokens={window}; "
                             "raise it or lower max_new_tokens.")
        cap = count("max_in_flight", max_in_flight, 0) if max_in_flight is not None else None
        return n, grow, total, cap

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        super().check_config(cfg)
        own = ("in_flight", "grow", "max_total_tokens", "max_in_flight")
        cls._options(cfg, **{k: v for k, v in cfg.credit_kwargs.items() if k in own})

    def eval_max_new_tokens(self, max_new_tokens):
        return self.max_total

    def prompts_to_draw(self, prompts_per_step, group_size):
        if self.grow:
            return prompts_per_step
        free = self.in_flight - (len(self.pool) if self.pool is not None else 0)
        return -(-free // group_size) if free > 0 else 0

    def extend_rollout(self, gen, ctx):
        parts, born = [], []
        step = self._steps  # policy updates so far: this step's index since the start
        if self.pool is not None and len(self.pool):
            pool, window = self.pool, int(ctx.cfg.max_new_tokens)
            lengths = pool.lengths
            cont = continue_from(ctx.model, pool, torch.arange(len(pool)), lengths, num_samples=1, eos_id=ctx.eos_id,
                                 max_new_tokens=window, budget=(self.max_total - lengths).clamp(max=window),
                                 temperature=ctx.cfg.temperature, top_p=ctx.cfg.top_p, generator=ctx.generator,
                                 logits_processor=self.logits_processor())
            cont.rewards = torch.as_tensor(ctx.score(cont), dtype=torch.float32)
            cont.failed = torch.zeros(len(cont), dtype=torch.bool)
            cont.extras = {"window_start": cont.extras["prefix_len"]}
            parts.append(cont)
            born.append(self.pool_born)
        self._n_cont = len(parts[0]) if parts else 0
        if gen is not None and len(gen):
            if not self.grow and len(gen) > self.in_flight - self._n_cont:  # the last prompt's surplus samples
                gen = gen.select(torch.arange(max(self.in_flight - self._n_cont, 0)))
            gen.extras["window_start"] = torch.zeros(len(gen), dtype=torch.int64)
            if gen.failed is None:
                gen.failed = torch.zeros(len(gen), dtype=torch.bool)
            parts.append(gen)
            born.append(torch.full((len(gen),), step, dtype=torch.int64))
        if not parts:
            raise ValueError("credit 'tppo': no sequence in flight and no new prompt this step (empty prompt pool?).")
        self._born = torch.cat(born)
        return Generation.concat(parts) if len(parts) > 1 else parts[0]

    def prepare(self, batch, gen, ctx):
        T = gen.response_mask.shape[1]
        self._mask = gen.response_mask & (torch.arange(T, device=gen.response_mask.device)[None, :] >= gen.extras["window_start"][:, None])
        # in flight after this window: no EOS and below max_total_tokens (a row at the limit is finished)
        self._live = gen.truncated & (gen.lengths < self.max_total)
        batch = batch.replace(truncated=self._live.to(batch.mask.device))
        return super().prepare(batch, gen, ctx)

    def loss_mask(self, mask):
        return mask if self._mask is None else self._mask

    def after_update(self, batch, gen, ctx):
        out = super().after_update(batch, gen, ctx)  # the critic, on the rows finished in this step
        assert self._live is not None
        rows = self._live.nonzero().squeeze(1).cpu()
        dropped = 0
        if self.max_in_flight is not None and rows.numel() > self.max_in_flight:
            dropped = rows.numel() - self.max_in_flight
            order = torch.argsort(self._born[rows], stable=True)  # oldest first (ties: row order)
            rows = rows[order[dropped:]].sort().values
        pool = gen.select(rows)
        pool.extras, pool.texts = {}, None
        self.pool, self.pool_born = pool, self._born[rows]
        n_new = len(gen) - self._n_cont
        out.update({
            "tppo/rows": float(len(gen)), "tppo/continued": float(self._n_cont), "tppo/new": float(n_new),
            "tppo/in_flight": float(len(pool)), "tppo/dropped": float(dropped),
            "tppo/finished_at_max": float(int((gen.truncated & ~self._live).sum())),
            "tppo/window_tokens": float(self._mask.sum()) if self._mask is not None else 0.0,
        })
        return out

    _POOL_FIELDS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "truncated", "prompt_index")

    def state_dict(self):
        out = super().state_dict()
        if self.pool is not None and len(self.pool):
            out["pool"] = {f: getattr(self.pool, f).clone() for f in self._POOL_FIELDS}
            out["pool_pad_id"] = self.pool.pad_id
            out["pool_born"] = self.pool_born.clone()
        return out

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if state and "pool" in state:
            self.pool = Generation(**state["pool"], pad_id=int(state["pool_pad_id"]))
            # checkpoints written before ``pool_born`` existed: all equally old (row order breaks ties)
            self.pool_born = state.get("pool_born", torch.zeros(len(self.pool), dtype=torch.int64))


CREDITS: Registry[type[Credit]] = Registry("credit")
CREDITS.add("none", Credit)
CREDITS.add("hapo", HapoCredit)
CREDITS.add("spo_chain", SpoChainCredit)
CREDITS.add("spo_tree", SpoTreeCredit)
CREDITS.add("critic", CriticCredit)
CREDITS.add("tppo", TppoCredit)


def make_credit(cfg: Any, model: torch.nn.Module) -> Credit:
    """The ``Credit`` named by ``cfg.credit`` with ``cfg.credit_kwargs`` (unknown names: suggestions)."""
    cls = CREDITS[cfg.credit]
    try:
        return cls(cfg, model, **cfg.credit_kwargs)
    except TypeError as exc:
        raise ValueError(f"credit_kwargs for credit {cfg.credit!r}: {exc}") from None

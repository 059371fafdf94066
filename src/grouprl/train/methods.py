"""Per-method trainer hooks: what the loop must do, beyond ``compute_advantages``, for a method.

One object, built from the config, that the loop calls at fixed points (docs/outcome-methods.md,
"Using them in a training loop")::

    hooks = MethodHooks(cfg, task, score_fns)
    batch = hooks.prepare(batch, gen, examples)      # rewards / mask / answer / reward_components
    adv   = hooks.advantages(batch, step)             # step= / total_steps= for schedules; COPO local
    hooks.before_update(entropy, mask, norms)         # TER: this step's coefficient
    policy_loss(..., entropy_coef=hooks.entropy_coef(cfg.entropy_coef), **hooks.loss_kwargs(mb))
    hooks.metrics(); hooks.state_dict(); hooks.load_state_dict(d)

What each method gets:

* ``canon_cosine`` / ``canon_cosine_r`` (any estimator, or term of an expression, whose
  hyperparameters include ``step``): the 0-based global ``step`` and, unless set in
  ``estimator_kwargs``, ``total_steps=cfg.steps`` (each goes to the terms that take it).
* A loss or estimator that declares the batch field ``answer`` (COPO) gets answer ids from
  ``task.extract`` of each response (COPO's pluggable answer extraction). A loss with an
  ``inputs`` hook (COPO's: ``copo_terms`` once per step, with the ``estimator_kwargs`` of the
  ``copo`` estimator when the expression uses it) trains on the hook's advantages and gets its
  per-row keywords per micro-batch (COPO: global advantages, blend weight). With
  ``estimator=copo`` and another loss the registered ``copo`` estimator's blended advantage is used.
* Confucius3-Math TER (``ter=true``): a stateful ``TargetedEntropyRegularizer`` (``ter_kwargs``:
  target, coef), updated once per step on the whole batch's entropies, checkpointed; its signed
  coefficient is added to ``entropy_coef``.
* DAPO overlong reward shaping (``overlong_buffer`` > 0: L_cache = overlong_buffer, L_max =
  max_new_tokens, factor ``overlong_factor``) before the advantages, and overlong filtering
  (``mask_truncated``: truncated rows keep their place in the group statistics but get no loss).
* Reward components (any estimator that declares the batch field ``reward_components`` in its
  ``needs``: ``maxmin``, ``gdpo``, or an expression with one): the K reward models of
  ``reward_models`` (a directory written by ``grouprl fit-rewards``) or the K functions of
  ``reward_components`` (``'task'`` / ``'module:function'``) score every response into
  ``batch.reward_components`` (B, K); each column gets the same per-response adjustments as
  ``rewards``: −kl_coef·KL(π_old‖π_ref) of the sequence with ``kl_in_reward`` (MaxMin's
  F_u = E[r_u] − β·KL, the MaxMin objective of arXiv:2402.08925) and DAPO's overlong penalty with
  ``overlong_buffer``. Setting either without such an estimator is an error.
* An estimator that declares a ``reward_view`` (MaxMin: the worst-off group's column) has that
  reward put into ``batch.rewards`` when it is the only term, so whatever else learns from the
  reward (the critic of ``credit=critic``) learns from it; its metrics (MaxMin: each group's batch
  mean ``maxmin/F_u`` and ``maxmin/worst_group``) are logged. ``normalize=zscore`` takes the
  reference statistics of ``reward_models`` unless ``estimator_kwargs`` give them.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..advantages import compute_advantages
from ..core import Rollouts
from ..losses import LOSSES

from .estimator_setup import check_method_config, estimator_hparams, load_reward_models

__all__ = ["MethodHooks", "estimator_takes", "reward_component_fns", "check_method_config", "estimator_hparams"]


def estimator_takes(name: str, hparam: str) -> bool:
    """Whether the estimator ``name`` (a registered name or an expression: any of its terms)
    accepts the hyperparameter ``hparam`` (False for unknown names)."""
    from ..advantages import registry

    try:
        terms = registry.parse(name).terms
    except Exception:  # noqa: BLE001 - an unknown name or a malformed expression takes nothing
        return False
    for _w, info, _kw in terms:
        defaults = getattr(info, "defaults", None)
        if (isinstance(defaults, dict) and hparam in defaults) or hparam in inspect.signature(info.fn).parameters:
            return True
    return False


def reward_component_fns(cfg: Any, task: Any, task_guard: Any) -> list[Callable[[list, list[str]], Tensor]]:
    """One scorer ``fn(examples, texts) -> (B,) rewards`` per reward component: the K models of
    ``cfg.reward_models`` (one scorer returning (B, K), in-process), or one per entry of
    ``cfg.reward_components``: ``'task'`` reuses the run's verifier guard, ``'module:function'`` gets
    its own guard (a worker with a timeout, failures scored ``failure_reward``)."""
    from ..tasks import RewardGuard
    from .reward_fns import load_reward_fn

    if cfg.reward_models:
        models = load_reward_models(cfg)
        fn = lambda ex, texts: models.score(None, texts)  # noqa: E731
        fn.guard = None  # type: ignore[attr-defined]
        fn.models = models  # type: ignore[attr-defined]
        return [fn]
    fns = []
    for spec in cfg.reward_components:
        guard = task_guard if spec == "task" else RewardGuard(
            load_reward_fn(spec), timeout_s=cfg.reward_timeout_s, failure_reward=cfg.failure_reward)
        fn = lambda ex, texts, g=guard: g.score_batch(ex, texts)[0]  # noqa: E731
        fn.guard = None if spec == "task" else guard  # type: ignore[attr-defined]
        fns.append(fn)
    return fns


def sequence_kl(old_logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
    """(B,) Σ_t (log π_old − log π_ref) over each response (k1), the loop's in-reward KL."""
    return ((old_logprobs - ref_logprobs) * mask).sum(dim=1)


class MethodHooks:
    """The method-specific steps of one training run (see the module docstring)."""

    def __init__(self, cfg: Any, task: Any, score_fns: Sequence[Callable[[list, list[str]], Tensor]] = ()) -> None:
        from ..losses.ter import TargetedEntropyRegularizer

        self.cfg = cfg
        self.task = task
        self.score_fns = list(score_fns)
        self.ter = TargetedEntropyRegularizer(**cfg.ter_kwargs) if cfg.ter else None
        if cfg.overlong_buffer > cfg.max_new_tokens:
            raise ValueError(
                f"overlong_buffer={cfg.overlong_buffer} exceeds max_new_tokens={cfg.max_new_tokens}; the soft "
                "punishment zone L_cache must fit inside the maximum length. Lower overlong_buffer."
            )
        from ..advantages import registry

        models = next((getattr(f, "models", None) for f in self.score_fns if getattr(f, "models", None)), None)
        self.est_kwargs = estimator_hparams(cfg, models)
        terms = registry.parse(cfg.estimator, **self.est_kwargs).terms
        self.fill_components = "reward_components" in registry.parse(cfg.estimator).needs
        if self.fill_components and not self.score_fns:
            raise ValueError(
                f"estimator {cfg.estimator!r} reads reward_components: set reward_models=DIR or reward_components="
                "[task, mymodule:brevity] (one reward function per user group); the built-in tasks have a single verifier."
            )
        self.views = [(info.name, info.reward_view, kw) for _w, info, kw in terms if info.reward_view is not None]
        self.view_sets_rewards = len(terms) == 1 and bool(self.views)
        self._view_metrics: dict[str, float] = {}
        # what the loss declares (grouprl.losses.register_loss): fields to fill, a per-step inputs hook
        loss = LOSSES[cfg.loss]
        self.fill_answer = "answer" in registry.parse(cfg.estimator).needs or "answer" in loss.needs
        self.loss_inputs = loss.inputs
        src = next((info for _w, info, _k in terms if info.name == loss.inputs_hparams_from), None)
        self.inputs_hparams = set(src.defaults) if src is not None else set()
        self._inputs = None  # this step's LossInputs
        self._ter_entropy: float | None = None

    # ------------------------------------------------------------------ batch
    def prepare(self, batch: Rollouts, texts: Sequence[str], examples: Sequence[Any]) -> Rollouts:
        """Reward shaping, extra batch fields and loss masks, before the advantages."""
        cfg = self.cfg
        shaping = None  # what reward shaping adds to each row's reward, for the components too
        if cfg.overlong_buffer > 0:
            from ..rewards.overlong import shape_overlong

            before = batch.rewards
            batch = shape_overlong(batch, max_length=cfg.max_new_tokens, cache_length=cfg.overlong_buffer,
                                   factor=cfg.overlong_factor)
            shaping = batch.rewards - before
        if self.fill_answer:
            from ..rewards.copo import answer_ids

            batch = batch.replace(answer=answer_ids(list(texts), extractor=self.task.extract).to(batch.device))
        if self.fill_components:
            cols = [fn(list(examples), list(texts)).to(torch.float32).reshape(len(batch), -1) for fn in self.score_fns]
            rc = torch.cat(cols, dim=1).to(batch.device)
            if cfg.kl_in_reward and batch.ref_logprobs is not None and cfg.kl_coef > 0:
                rc = rc - cfg.kl_coef * sequence_kl(batch.old_logprobs, batch.ref_logprobs, batch.mask)[:, None]
            if shaping is not None:
                rc = rc + shaping.to(rc.dtype)[:, None]
            batch = batch.replace(reward_components=rc)
        self._view_metrics = {}
        for name, view, kw in self.views:
            r, m = view(batch, **kw)
            self._view_metrics.update({f"{name}/{k}": v for k, v in m.items()})
            if self.view_sets_rewards:
                batch = batch.replace(rewards=r.to(batch.rewards.dtype))
        if cfg.mask_truncated:
            from ..rewards.overlong import overlong_filter

            batch = overlong_filter(batch)
        return batch

    def advantages(self, batch: Rollouts, step: int) -> Tensor:
        """(B, T) advantages; schedules get ``step``/``total_steps``; a loss with an ``inputs`` hook
        (COPO: the local advantages) gets its own."""
        cfg = self.cfg
        kw = dict(self.est_kwargs)
        if estimator_takes(cfg.estimator, "step"):
            kw.setdefault("step", step)
            if estimator_takes(cfg.estimator, "total_steps"):
                kw.setdefault("total_steps", cfg.steps)
        if self.loss_inputs is None:
            return compute_advantages(cfg.estimator, batch, **kw)
        self._inputs = self.loss_inputs(batch, **{k: v for k, v in kw.items() if k in self.inputs_hparams})
        return self._inputs.advantages

    # ------------------------------------------------------------------ update
    @property
    def needs_entropy(self) -> bool:
        """Whether the update must compute the policy's token entropy (TER)."""
        return self.ter is not None

    def before_update(self, entropy: Tensor, mask: Tensor, norms: dict[str, Any]) -> None:
        """Once per step, before the micro-batches: TER reads the whole batch's entropy."""
        if self.ter is not None:
            self.ter.update(entropy, mask, **norms)
            self._ter_entropy = self.ter.last_entropy

    def entropy_coef(self, base: float) -> float:
        """The entropy coefficient for ``policy_loss``: the config's plus TER's signed one."""
        return base + (self.ter.entropy_coef if self.ter is not None else 0.0)

    def loss_kwargs(self, rows: Tensor) -> dict[str, Any]:
        """Extra ``policy_loss`` keywords for the micro-batch ``rows`` (the loss's declared inputs)."""
        return {} if self._inputs is None else self._inputs.for_rows(rows)

    # ------------------------------------------------------------------ log and checkpoint
    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.ter is not None:
            out["ter/coef"] = float(self.ter.signed_coef)
            if self._ter_entropy is not None:
                out["ter/entropy"] = float(self._ter_entropy)
        if self._inputs is not None:
            out.update(self._inputs.metrics)
        out.update(self._view_metrics)
        return out

    def close(self) -> None:
        """Stop the worker processes of the extra reward guards."""
        for fn in self.score_fns:
            g = getattr(fn, "guard", None)
            if g is not None and hasattr(g, "close"):
                g.close()

    def state_dict(self) -> dict[str, Any]:
        return {"ter": self.ter.state_dict() if self.ter is not None else None}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if self.ter is not None and d.get("ter") is not None:
            self.ter.load_state_dict(d["ter"])

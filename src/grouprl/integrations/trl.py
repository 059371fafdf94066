"""TRL plug-in: ``GroupRLGRPOTrainer``, a ``trl.GRPOTrainer`` with grouprl advantages and losses
(tested: TRL 1.16.0).

TRL computes GRPO advantages inline in ``_generate_and_score_completions`` and has no hook for
them (TRL issue #4525). The subclass overrides three methods and nothing else:

* ``_calculate_rewards``: calls TRL's and keeps the gathered reward matrix (all processes, one
  column per reward function) — TRL does not return it;
* ``_generate_and_score_completions``: calls TRL's, then replaces ``advantages`` in its output by
  grouprl's estimator on the same rewards (weighted sum over reward functions as TRL's
  ``sum_then_normalize``; ``reward_components`` = the per-function rewards for multi-reward
  estimators), and rewrites the advantages TRL logged for this batch so the completions table and
  the logged rewards stay consistent. Unscorable rows (every reward function returned None) get
  advantage 0 and are left out of the group statistics, as in TRL;
* ``_compute_loss`` (only when ``loss=`` is given): the per-token log-probs and entropies from
  TRL's helper, then ``grouprl.losses.policy_loss`` with TRL's normalisers, KL (``beta``, k3) and
  rollout importance weights (TRL's vLLM ``importance_sampling_ratio``; grouprl's own truncated
  weights are ``grouprl.losses.rollout_is_weights``, importable for a custom loss).

Groups: ``group_by="block"`` (default) = contiguous blocks of ``num_generations`` rows, TRL's own
layout; ``group_by="prompt"`` = rows with the same prompt (so a prompt that appears twice in a
batch forms one group).

Advantages are kept per completion, shape (B,), when the estimator gives every token of a row the
same value (TRL's shape); token-level estimators hand TRL a (B, T) tensor, which its loss accepts.

TRL's GRPO advantage is ``grpo`` with ``eps=1e-4`` (unbiased std, ``scale_rewards="group"``);
pass ``estimator_hparams={"eps": 1e-4}`` to reproduce it exactly (constant groups of non-dyadic
rewards excepted: grouprl gives exactly 0 there).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..advantages import Estimator, group_diagnostics, resolve
from ..core import Rollouts

from trl import GRPOTrainer  # noqa: E402  (this module is the TRL adapter)

__all__ = ["GroupRLGRPOTrainer", "resolve_estimator", "check_declarations", "TRL_SUPPLIES"]

GROUP_BY = ("block", "prompt")
# Keyword arguments TRL's log-prob helper takes from the batch (multimodal models).
_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def resolve_estimator(estimator: str | Estimator, hparams: dict[str, Any] | None = None) -> Estimator:
    """``grouprl.advantages.resolve`` with the trainer's ``estimator_hparams`` dict (a name, an
    expression such as ``"0.7*grpo + 0.3*rloo | whiten"``, or an Estimator with no hparams)."""
    return resolve(estimator, **dict(hparams or {}))


# The batch fields this adapter builds for an estimator (from TRL's rewards, completion masks and
# prompts) and the loss inputs it passes; a method that declares anything else is refused.
TRL_SUPPLIES: tuple[str, ...] = ("rewards", "group", "mask", "reward_components")


def check_declarations(est: Estimator, loss: str | None = None) -> None:
    """Refuse, before the model is built, an estimator or loss whose registry declarations ask for
    inputs this adapter cannot supply (``EstimatorInfo.needs``, ``LossInfo.needs`` / ``inputs``)."""
    for _, info, _ in est.terms:
        missing = [f for f in info.needs if f not in TRL_SUPPLIES]
        if missing:
            raise ValueError(
                f"GroupRLGRPOTrainer: estimator {info.name!r} needs the batch field(s) "
                f"{', '.join(map(repr, missing))}, which the TRL adapter cannot supply (it builds "
                f"{', '.join(TRL_SUPPLIES)} from TRL's rewards, masks and prompts); use grouprl's own trainer "
                "(grouprl train) or the verl plug-in for this estimator."
            )
    if loss is None:
        return
    from ..losses import LOSSES

    linfo = LOSSES[loss]  # unknown name -> error with suggestions
    if linfo.needs or linfo.inputs is not None:
        what = f"the batch field(s) {', '.join(map(repr, linfo.needs))}" if linfo.needs else "per-step inputs"
        raise ValueError(
            f"GroupRLGRPOTrainer: policy loss {loss!r} needs {what} (its declared inputs hook), which the TRL "
            "adapter cannot supply; use grouprl's own trainer (grouprl train) or the verl plug-in for this loss."
        )


class GroupRLGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` whose advantages (and optionally loss) come from grouprl.

    Args (besides GRPOTrainer's):
        estimator: a grouprl estimator name or expression (default ``"grpo"``), or an Estimator.
        estimator_hparams: its keyword arguments (e.g. ``{"eps": 1e-4}`` for TRL's epsilon).
        group_by: ``"block"`` (contiguous blocks of ``num_generations`` rows) or ``"prompt"``.
        loss: a grouprl policy-loss name; ``None`` keeps TRL's own loss (``args.loss_type``).
        loss_hparams: keyword arguments of the loss (clip ranges, ...).
        loss_agg: grouprl aggregation mode; ``None`` (default) = the loss's own mode if it has one
            (GSPO, SAPO: ``seq-mean-token-mean``), else ``"token-mean"`` (normalised like TRL's
            ``dapo``: tokens of the whole generation batch). A mode given here applies to every
            loss.
    """

    def __init__(
        self,
        *args: Any,
        estimator: str | Estimator = "grpo",
        estimator_hparams: dict[str, Any] | None = None,
        group_by: str = "block",
        loss: str | None = None,
        loss_hparams: dict[str, Any] | None = None,
        loss_agg: str | None = None,
        **kwargs: Any,
    ) -> None:
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by={group_by!r}; choose one of {GROUP_BY}.")
        self.grouprl_estimator = resolve_estimator(estimator, estimator_hparams)
        check_declarations(self.grouprl_estimator, loss)
        self.grouprl_group_by = group_by
        self.grouprl_loss = loss
        self.grouprl_loss_hparams = dict(loss_hparams or {})
        self.grouprl_loss_agg = loss_agg
        if loss is not None:
            from ..losses import LOSSES
            from ..losses.aggregation import check_agg

            LOSSES[loss]  # unknown name -> error with suggestions, before the model is built
            if loss_agg is not None:
                check_agg(loss_agg)
        self._grouprl_rewards_per_func: Tensor | None = None
        self._grouprl_last: dict[str, Tensor] = {}
        super().__init__(*args, **kwargs)
        if loss is not None:
            self._check_loss_options()

    def _check_loss_options(self) -> None:
        """TRL options that act inside TRL's own loss have no meaning with a grouprl loss: refuse
        them instead of ignoring them silently."""
        a = self.args
        bad = [
            ("importance_sampling_level", a.importance_sampling_level != "token",
             "use the grouprl loss 'gspo' for sequence-level ratios"),
            ("top_entropy_quantile", a.top_entropy_quantile < 1.0, "leave it at 1.0"),
            ("off_policy_mask_threshold", a.off_policy_mask_threshold is not None, "leave it at None"),
            ("use_adaptive_entropy", bool(getattr(a, "use_adaptive_entropy", False)),
             "use a constant entropy_coef"),
            ("delta", getattr(a, "delta", None) is not None, "pass the loss's own hyperparameter (ppo_clip: delta)"),
        ]
        for field, is_set, fix in bad:
            if is_set:
                raise ValueError(
                    f"GroupRLGRPOTrainer(loss={self.grouprl_loss!r}): GRPOConfig.{field} acts inside TRL's own "
                    f"loss and is not applied to a grouprl loss; {fix}, or use loss=None."
                )

    # ----------------------------------------------------------------------------- advantages
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # noqa: D401
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._grouprl_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _grouprl_groups(self, inputs: Sequence[dict], n_rows: int, num_generations: int, device) -> Any:
        if self.grouprl_group_by == "block":
            if n_rows % num_generations:
                raise ValueError(
                    f"GroupRLGRPOTrainer: {n_rows} rows are not a whole number of groups of "
                    f"num_generations={num_generations}; use group_by='prompt'."
                )
            return torch.arange(n_rows, device=device) // num_generations
        from accelerate.utils import gather_object

        return gather_object([repr(x.get("prompt")) for x in inputs])

    def grouprl_advantages(
        self,
        rewards_per_func: Tensor,
        group: Any,
        mask: Tensor,
    ) -> Tensor:
        """grouprl advantages (B, T) float32 for the gathered batch: rewards = weighted nansum over
        reward functions; rows where every function returned None get 0 and are left out."""
        weights = self.reward_weights.to(rewards_per_func.device)
        scorable = ~torch.isnan(rewards_per_func).all(dim=1)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        B, T = mask.shape
        out = torch.zeros(B, T, dtype=torch.float32, device=mask.device)
        if not bool(scorable.any()):
            return out
        rows = scorable.nonzero().squeeze(1)
        kw: dict[str, Any] = {
            "rewards": rewards[rows].float(),
            "mask": mask[rows].bool(),
            "group": group[rows] if isinstance(group, Tensor) else [group[i] for i in rows.tolist()],
        }
        if "reward_components" in self.grouprl_estimator.needs:
            kw["reward_components"] = torch.nan_to_num(rewards_per_func[rows].float(), nan=0.0)
        batch = Rollouts(**kw)
        adv = self.grouprl_estimator(batch)
        out[rows] = adv.to(out.device)
        self._grouprl_last = {k: v for k, v in group_diagnostics(batch).items()}
        return out

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        rewards_per_func = self._grouprl_rewards_per_func
        if rewards_per_func is None:  # a rollout path that bypassed _calculate_rewards
            raise RuntimeError("GroupRLGRPOTrainer: TRL did not compute rewards through _calculate_rewards.")
        self._grouprl_rewards_per_func = None
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval

        local_mask = output["completion_mask"]
        if "tool_mask" in output:
            local_mask = local_mask * output["tool_mask"]
        n_local = local_mask.shape[0]
        full_mask = self.accelerator.gather(self.accelerator.pad_across_processes(local_mask, dim=1, pad_index=0))
        n_all = rewards_per_func.shape[0]
        if full_mask.shape[0] != n_all:
            raise RuntimeError(
                f"GroupRLGRPOTrainer: {full_mask.shape[0]} completion masks for {n_all} reward rows."
            )
        group = self._grouprl_groups(inputs, n_all, num_generations, rewards_per_func.device)
        adv_all = self.grouprl_advantages(rewards_per_func, group, full_mask.to(rewards_per_func.device))

        m = full_mask.to(adv_all.device).bool()
        counts = m.sum(dim=1)
        per_row = (adv_all * m).sum(dim=1) / counts.clamp_min(1)
        big = torch.finfo(adv_all.dtype).max
        row_max = torch.where(m, adv_all, -big).amax(dim=1)
        row_min = torch.where(m, adv_all, big).amin(dim=1)
        constant_rows = bool(((row_max == row_min) | (counts == 0)).all())

        start = self.accelerator.process_index * n_local
        local_rows = slice(start, start + n_local)
        if constant_rows:
            output["advantages"] = per_row[local_rows].to(output["completion_mask"].device)
        else:
            output["advantages"] = adv_all[local_rows, : local_mask.shape[1]].to(output["completion_mask"].device)

        # TRL logged its own advantages for these rows: replace them.
        logged = self._logs["advantages"]
        for _ in range(min(n_all, len(logged))):
            logged.pop()
        logged.extend(per_row.tolist())
        for k, v in self._grouprl_last.items():
            self._metrics[mode][f"grouprl/{k}"].append(float(v))
        return output

    # ---------------------------------------------------------------------------------- loss
    def _compute_loss(self, model, inputs):
        if self.grouprl_loss is None:
            return super()._compute_loss(model, inputs)
        from ..losses import policy_loss

        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{k: inputs.get(k) for k in _FORWARD_KEYS},
        )
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        adv = inputs["advantages"]
        if adv.dim() == 1:
            adv = adv.unsqueeze(1).expand_as(logps)

        mode = "train" if self.model.training else "eval"
        accum = self.current_gradient_accumulation_steps if mode == "train" else 1
        # TRL's normalisers: tokens of the generation batch per process and accumulation window
        # (its "dapo"), sequences of the accumulation window (its "grpo"), max_completion_length.
        num_tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            num_tokens = num_tokens * accum / self.args.steps_per_generation
        num_seqs = logps.shape[0] * accum
        ref = inputs.get("ref_per_token_logps") if self.beta != 0.0 else None
        is_weights = inputs.get("importance_sampling_ratio") if self.use_vllm else None
        hparams = dict(self.grouprl_loss_hparams)
        hparams.setdefault("respect_agg", self.grouprl_loss_agg is not None)
        loss, metrics = policy_loss(
            self.grouprl_loss,
            logps,
            old,
            adv,
            mask,
            agg=self.grouprl_loss_agg or "token-mean",
            num_tokens=num_tokens,
            num_seqs=num_seqs,
            norm_const=self.max_completion_length,
            ref_logprobs=ref,
            kl_coef=float(self.beta) if ref is not None else 0.0,
            kl_type="k3",
            entropy=entropies,
            entropy_coef=float(getattr(self, "entropy_coef", 0.0) or 0.0),
            rollout_is_weights=is_weights,
            **hparams,
        )
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accum

        m = mask.float()
        totals = self.accelerator.reduce(torch.stack([(entropies * m).sum(), m.sum()]).detach(), reduction="sum")
        self._metrics[mode]["entropy"].append((totals[0] / totals[1].clamp(min=1.0)).item())
        for k, v in metrics.items():
            v = torch.as_tensor(v, device=logps.device, dtype=torch.float32).detach().reshape(1)
            self._metrics[mode][f"grouprl/{k}"].append(self.accelerator.gather(v).nanmean().item())
        return loss

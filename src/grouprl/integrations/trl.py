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

Inputs come from the registry declarations of the chosen terms, never from their names: the
estimator's and the loss's ``needs`` beyond what TRL supplies (``TRL_SUPPLIES``) and the
estimator's ``optional`` fields come from field functions (``fields={"answer": fn}``, called like
a reward function, one value per completion); a loss's ``inputs`` hook (COPO) runs once per
generation batch on all processes' rows and its per-row outputs travel with the rows to the loss;
a loss taking ``token_entropy`` (HAPO) gets TRL's entropies. A declared field the adapter cannot
build is refused at construction with its name and the way to supply it (``check_declarations``).

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
from ..core.batch import ROW_FIELDS
from .declarations import hook_hparams

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


# The batch fields this adapter builds from TRL's own data (rewards, completion masks, prompts);
# any other per-completion field a chosen term declares comes from a field function (``fields=``).
TRL_SUPPLIES: tuple[str, ...] = ("rewards", "group", "mask", "reward_components")
_FIELD_FN_CALL = (
    "fn(prompts=..., completions=..., completion_ids=..., **dataset columns) -> one value per completion, "
    "called like a TRL reward function"
)


def _unsupplied(field: str, who: str) -> ValueError:
    if field in ROW_FIELDS:
        how = f"pass fields={{{field!r}: fn}} to GroupRLGRPOTrainer, with {_FIELD_FN_CALL}"
    else:
        how = (f"{field!r} is a per-token or segment input that TRL's generation step does not produce; use "
               "grouprl's own trainer (grouprl train) or the verl plug-in for this method")
    return ValueError(
        f"GroupRLGRPOTrainer: {who} needs the batch field {field!r} (its registry declaration), which the TRL "
        f"adapter builds only from {', '.join(TRL_SUPPLIES)} and the field functions given: {how}."
    )


def check_declarations(est: Estimator, loss: str | None = None, fields: Sequence[str] = ()) -> None:
    """Refuse, before the model is built, a method whose registry declarations ask for inputs the
    adapter cannot build (``EstimatorInfo.needs``, ``LossInfo.needs``), naming the field and how to
    supply it, and a field function that no chosen term declares (``needs`` or ``optional``)."""
    from ..losses import LOSSES

    linfo = LOSSES[loss] if loss is not None else None  # unknown name -> error with suggestions
    for f in fields:
        if f not in ROW_FIELDS:
            raise ValueError(
                f"GroupRLGRPOTrainer: fields={f!r}: a field function supplies one value per completion, i.e. one "
                f"of the per-row batch fields {', '.join(ROW_FIELDS)}."
            )
    declared = set(est.needs) | set(est.optional) | set(linfo.needs if linfo else ())
    unused = [f for f in fields if f not in declared]
    if unused:
        raise ValueError(
            f"GroupRLGRPOTrainer: fields={unused[0]!r}: no chosen estimator or loss declares it (needs: "
            f"{sorted(declared)}); it would be ignored, remove it."
        )
    provided = set(TRL_SUPPLIES) | set(fields)
    for _, info, _ in est.terms:
        missing = [f for f in info.needs if f not in provided]
        if missing:
            raise _unsupplied(missing[0], f"estimator {info.name!r}")
    if linfo is not None:
        missing = [f for f in linfo.needs if f not in provided]
        if missing:
            raise _unsupplied(missing[0], f"policy loss {loss!r}")


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
        fields: per-completion batch fields that the chosen estimator or loss declares beyond
            what TRL supplies (``TRL_SUPPLIES``), each ``{name: fn}`` with ``fn(prompts=,
            completions=, completion_ids=, **dataset columns)`` returning one value per completion,
            like a TRL reward function (COPO: ``{"answer": extract_final_answer}``). A declared field
            without one is refused here, naming it; a field no chosen term declares is refused too.

    A loss with an ``inputs`` hook (COPO) gets the hook's outputs computed once per generation batch
    over all processes' rows (its advantages replace the estimator's, as in grouprl's trainer); a
    loss taking ``token_entropy`` (HAPO) gets TRL's per-token entropies of the current policy.
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
        fields: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by={group_by!r}; choose one of {GROUP_BY}.")
        self.grouprl_estimator = resolve_estimator(estimator, estimator_hparams)
        self.grouprl_fields = dict(fields or {})
        check_declarations(self.grouprl_estimator, loss, tuple(self.grouprl_fields))
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
        self._grouprl_field_values: dict[str, list] = {}
        self._grouprl_last: dict[str, Tensor] = {}
        self._grouprl_row_kwargs: dict[str, Tensor] = {}  # the loss hook's per-row inputs, all processes' rows
        self._grouprl_hook_kwargs: dict[str, Any] = {}
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
        self._grouprl_field_values = self._grouprl_compute_fields(inputs, prompts, completions, completion_ids_list)
        return rewards_per_func

    def _grouprl_compute_fields(self, inputs, prompts, completions, completion_ids_list) -> dict[str, list]:
        """The field functions' values for this process's completions, gathered over processes in
        the order TRL gathers its rewards."""
        if not self.grouprl_fields:
            return {}
        from accelerate.utils import gather_object

        columns = {k: [x[k] for x in inputs] for k in inputs[0] if k not in ("prompt", "completion", "completion_ids")}
        out = {}
        for name, fn in self.grouprl_fields.items():
            values = list(fn(prompts=prompts, completions=completions, completion_ids=completion_ids_list, **columns))
            if len(values) != len(prompts):
                raise ValueError(
                    f"GroupRLGRPOTrainer: the field function for {name!r} returned {len(values)} values for "
                    f"{len(prompts)} completions; return one value per completion."
                )
            out[name] = gather_object(values)
        return out

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
        reward functions; rows where every function returned None get 0 and are left out. With a
        loss that declares an ``inputs`` hook, the hook's advantages, and its per-row inputs kept
        for ``_compute_loss``."""
        weights = self.reward_weights.to(rewards_per_func.device)
        scorable = ~torch.isnan(rewards_per_func).all(dim=1)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        B, T = mask.shape
        out = torch.zeros(B, T, dtype=torch.float32, device=mask.device)
        self._grouprl_row_kwargs, self._grouprl_hook_kwargs = {}, {}
        hook = None
        if self.grouprl_loss is not None:
            from ..losses import LOSSES

            hook = LOSSES[self.grouprl_loss].inputs
        if not bool(scorable.any()):
            if hook is not None:
                raise ValueError(
                    f"GroupRLGRPOTrainer: every reward function returned None for every completion of this "
                    f"generation batch; the inputs hook of loss {self.grouprl_loss!r} needs scored rows."
                )
            return out
        rows = scorable.nonzero().squeeze(1)
        kw: dict[str, Any] = {
            "rewards": rewards[rows].float(),
            "mask": mask[rows].bool(),
            "group": group[rows] if isinstance(group, Tensor) else [group[i] for i in rows.tolist()],
        }
        if "reward_components" in self.grouprl_estimator.needs:
            kw["reward_components"] = torch.nan_to_num(rewards_per_func[rows].float(), nan=0.0)
        picked = rows.tolist()
        for name, values in self._grouprl_field_values.items():
            kw[name] = [values[i] for i in picked]
        batch = Rollouts(**kw)
        self._grouprl_last = {k: v for k, v in group_diagnostics(batch).items()}
        if hook is None:
            out[rows] = self.grouprl_estimator(batch).to(out.device)
            return out
        # the loss's declared once-per-step inputs: its advantages replace the estimator's;
        # unscorable rows get zeros (COPO: a zero loss)
        li = hook(batch, **hook_hparams(self.grouprl_estimator, self.grouprl_loss))
        out[rows] = li.advantages.to(device=out.device, dtype=out.dtype)
        for k, v in li.row_kwargs.items():
            full = torch.zeros(B, dtype=torch.float32, device=mask.device)
            full[rows] = v.to(device=mask.device, dtype=torch.float32)
            self._grouprl_row_kwargs[k] = full
        self._grouprl_hook_kwargs = dict(li.kwargs)
        self._grouprl_last.update(li.metrics)
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

        for k, v in self._grouprl_row_kwargs.items():  # the loss hook's per-row inputs, split with the rows
            output[f"grouprl_{k}"] = v[local_rows].to(output["completion_mask"].device)

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
        hparams.update({k: inputs[f"grouprl_{k}"] for k in self._grouprl_row_kwargs})
        hparams.update(self._grouprl_hook_kwargs)
        from ..losses import LOSSES

        if "token_entropy" in LOSSES[self.grouprl_loss].defaults:  # HAPO: the current policy's entropies
            hparams["token_entropy"] = entropies.detach()
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

"""TRL plug-in, issue 16 item 3: the adapter builds a method's inputs from the union of its terms'
declarations. Every registered estimator and loss either works in the adapter (its advantage step,
with the declared per-completion fields from field functions) or is refused at construction with
the field named and how to supply it. COPO's and HAPO's losses train on the tiny model."""

from __future__ import annotations

import types

import pytest
import torch
from conftest import require

require("trl")

from grouprl.advantages import ESTIMATORS  # noqa: E402
from grouprl.advantages import get as get_estimator  # noqa: E402
from grouprl.advantages.registry import example_batch  # noqa: E402
from grouprl.core import Rollouts  # noqa: E402
from grouprl.core.batch import ROW_FIELDS  # noqa: E402
from grouprl.integrations.trl import TRL_SUPPLIES, GroupRLGRPOTrainer, check_declarations  # noqa: E402
from grouprl.losses import LOSSES  # noqa: E402


def _extra(info) -> list[str]:
    return [f for f in info.needs if f not in TRL_SUPPLIES]


def _row_fields(info) -> list[str]:
    return [f for f in _extra(info) if f in ROW_FIELDS]


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_is_accepted_with_its_declared_fields_or_refused_naming_one(name):
    info = ESTIMATORS[name]
    est = get_estimator(name)
    extra = _extra(info)
    if not extra:
        check_declarations(est)
        return
    with pytest.raises(ValueError, match=rf"estimator '{name}' needs the batch field '{extra[0]}'"):
        check_declarations(est)
    if set(extra) <= set(ROW_FIELDS):  # per-completion fields: a field function supplies each
        with pytest.raises(ValueError, match=rf"fields=\{{'{extra[0]}': fn\}}"):
            check_declarations(est)
        check_declarations(est, fields=extra)
    else:  # per-token or segment inputs: refused with the reason
        with pytest.raises(ValueError, match="per-token or segment input"):
            check_declarations(est, fields=[f for f in extra if f in ROW_FIELDS])


ACCEPTED = sorted(n for n, i in ESTIMATORS.items() if i.example and set(_extra(i)) <= set(ROW_FIELDS))


@pytest.mark.parametrize("name", ACCEPTED)
def test_every_accepted_estimator_runs_in_the_adapters_advantage_step(name):
    """The adapter's advantage step (rewards from TRL's reward matrix, the declared fields from
    field-function values, shuffled rows) equals the estimator on the same batch built directly."""
    info = ESTIMATORS[name]
    ex, kwargs = example_batch(info.example)
    B = len(ex.rewards)
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(0))  # rows in another order
    rc = ex.reward_components if ex.reward_components is not None else ex.rewards.reshape(B, 1)
    rpf = rc.to(torch.float32)[perm]
    fields = _row_fields(info) + [f for f in info.optional if f in ROW_FIELDS and ex.has(f)]
    values = {f: getattr(ex, f)[perm].tolist() for f in fields}
    fake = types.SimpleNamespace(
        reward_weights=torch.ones(rpf.shape[1]), grouprl_estimator=get_estimator(name, **kwargs),
        _grouprl_field_values=values, grouprl_loss=None,
    )
    mask = ex.mask[perm].bool()
    group = ex.group[perm]
    adv = GroupRLGRPOTrainer.grouprl_advantages(fake, rpf, group, mask)
    direct = {"rewards": rpf.sum(1), "group": group, "mask": mask, **{f: getattr(ex, f)[perm] for f in fields}}
    if ex.reward_components is not None:
        direct["reward_components"] = rpf
    want = get_estimator(name, **kwargs)(Rollouts(**direct))
    torch.testing.assert_close(adv[mask], want.to(adv.dtype)[mask], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_accepted_with_its_declared_fields_or_refused_naming_one(name):
    info = LOSSES[name]
    est = get_estimator("grpo")
    if not info.needs:
        check_declarations(est, name)
        return
    with pytest.raises(ValueError, match=rf"policy loss '{name}' needs the batch field '{info.needs[0]}'.*fields="):
        check_declarations(est, name)
    check_declarations(est, name, fields=info.needs)


def test_field_functions_must_be_declared_and_per_completion():
    with pytest.raises(ValueError, match=r"fields='answer': no chosen estimator or loss declares it"):
        check_declarations(get_estimator("grpo"), "ppo_clip", fields=["answer"])
    with pytest.raises(ValueError, match=r"fields='values': a field function supplies one value per completion"):
        check_declarations(get_estimator("gae"), fields=["values"])
    check_declarations(get_estimator("copo"), fields=["answer"])  # the estimator declares it
    check_declarations(get_estimator("mars"), fields=["trajectory", "step", "step_rewards", "role"])  # optional


# ------------------------------------------------------------------ training on the tiny model
def _trl_run(tmp_path, cls, **kwargs):
    from test_integration_trl import count_a, run

    return run(tmp_path, cls, steps=1, reward_funcs=(count_a,), **kwargs)


def first_word(completions, **kwargs):
    """A toy 'final answer': the completion's first word."""
    return [(c.split() or [""])[0] for c in completions]


def test_copo_loss_trains_in_trl_with_its_hook_inputs(tmp_path):
    from test_integration_trl import RecGroupRL

    seen = []

    class Rec(RecGroupRL):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            seen.append({k: out[k].clone() for k in ("advantages", "grouprl_global_advantages", "grouprl_blend_weight")})
            seen[-1]["answers"] = list(self._grouprl_field_values["answer"])
            return out

    tr = _trl_run(tmp_path, Rec, loss="copo", estimator="copo", estimator_hparams={"k": 2.0},
                  fields={"answer": first_word})
    (step,) = seen
    # the hook's inputs, recomputed from the recorded rewards and answers (k from the copo estimator)
    from grouprl.advantages.copo import copo_terms

    rewards = tr.rewards[0].sum(1)
    t = copo_terms(Rollouts(rewards=rewards, group=torch.arange(4) // 4, mask=torch.ones(4, 1), answer=step["answers"]),
                   k=2.0)
    torch.testing.assert_close(step["grouprl_global_advantages"], t.global_.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(step["grouprl_blend_weight"], t.weight.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(step["advantages"], t.local.float(), atol=1e-6, rtol=0)
    logged = [h for h in tr.state.log_history if "grouprl/copo/blend_weight" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["loss"])) for h in tr.state.log_history if "loss" in h)


def test_copo_loss_without_its_field_function_is_refused_naming_answer():
    with pytest.raises(ValueError, match=r"policy loss 'copo' needs the batch field 'answer'.*fields=\{'answer': fn\}"):
        GroupRLGRPOTrainer(model=None, loss="copo")


def test_hapo_loss_trains_in_trl_on_trls_entropies(tmp_path):
    from test_integration_trl import RecGroupRL

    tr = _trl_run(tmp_path, RecGroupRL, loss="hapo")
    logged = [h for h in tr.state.log_history if "grouprl/hapo_h_mean" in h]
    assert logged, "the hapo loss ran with token entropies (its ĥ metric is logged)"

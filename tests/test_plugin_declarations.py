"""Issue 16 item 3: the plug-ins take a method's extra inputs from its registry declarations.

Every estimator and loss that the verl plug-in registers is called exactly as verl 0.9.1 calls it
(``compute_advantage``: ``fn(token_level_rewards=, response_mask=, config=<algorithm DictConfig>,
index=uid[, reward_baselines=])``; ``ppo_loss``: ``fn(old_log_prob=, log_prob=, advantages=,
response_mask=, loss_agg_mode=, config=<ActorConfig>, rollout_is_weights=)``) with the declared
fields supplied in a DataProto (``grouprl_data``: the step's stored inputs for a loss with an
``inputs`` hook) or verl's model output (``token_entropy``), and compared with grouprl's direct call;
without a declared field the call raises an error naming it. The actor path itself (verl's
mini/micro-batching and ppo_loss) is tests/test_verl_actor_path.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import require

require("verl")
core_algos = require("verl.trainer.ppo.core_algos")

from omegaconf import OmegaConf  # noqa: E402
from verl.protocol import DataProto  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402
from verl.workers.config.actor import PolicyLossConfig  # noqa: E402

from grouprl.advantages import ESTIMATORS  # noqa: E402
from grouprl.advantages.registry import example_batch  # noqa: E402
from grouprl.advantages import get as get_estimator  # noqa: E402
from grouprl.core import Rollouts  # noqa: E402
from grouprl.integrations import verl as gv  # noqa: E402
from grouprl.losses import LOSSES, policy_loss  # noqa: E402

REG = gv.register_all()
# verl's own keywords; every other declared need is a DataProto field of the same name
VERL_ARGS = {"rewards", "group", "mask", "token_rewards", "reward_baselines"}
WITH_EXAMPLE = sorted(n for n, i in ESTIMATORS.items() if i.example)


def _verl_inputs(name):
    """verl's estimator inputs for the worked example of ``name``: the reward on the last valid
    token (verl's outcome reward), string uids, and a DataProto holding the declared extras."""
    info = ESTIMATORS[name]
    ex, kwargs = example_batch(info.example)
    mask = ex.mask.to(torch.float32)
    B, T = mask.shape
    last = (T - 1) - mask.flip(1).argmax(1)
    tlr = torch.zeros(B, T).scatter_(1, last.unsqueeze(1), ex.rewards.to(torch.float32).unsqueeze(1))
    uid = np.array([f"uid-{int(g)}" for g in ex.group.tolist()], dtype=object)
    # the declared needs, and the optional fields the example holds, each under its DataProto key
    wanted = [f for f in info.needs if f not in VERL_ARGS] + [f for f in info.optional if ex.has(f)]
    extras = {f: (getattr(ex, f) if f in Rollouts.__dataclass_fields__ else ex.extras[f]) for f in wanted}
    tensors = {"token_level_rewards": tlr, "response_mask": mask}
    non_tensors = {"uid": uid}
    for f, v in extras.items():
        key = gv.DEFAULT_FIELD_KEYS.get(f, f)
        if isinstance(v, torch.Tensor) and v.dtype.is_floating_point:
            tensors[key] = v
        else:
            non_tensors[key] = np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v)
    data = DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)
    return ex, kwargs, tlr, mask, uid, extras, data


def _verl_call(name, tlr, mask, uid, kwargs, ex, data):
    fn = core_algos.get_adv_estimator_fn(f"grouprl.{name}")
    config = OmegaConf.create({"adv_estimator": f"grouprl.{name}", "gamma": 1.0, "lam": 1.0,
                               "grouprl": {"hparams": kwargs}})
    adv_kwargs = {"token_level_rewards": tlr, "response_mask": mask, "config": config, "index": uid}
    if ex.reward_baselines is not None:  # verl passes it when the batch has it
        adv_kwargs["reward_baselines"] = ex.reward_baselines.to(torch.float32)
    return fn(**adv_kwargs, grouprl_data=data)


@pytest.mark.parametrize("name", WITH_EXAMPLE)
def test_every_estimator_runs_under_verls_call_and_equals_the_direct_call(name):
    ex, kwargs, tlr, mask, uid, extras, data = _verl_inputs(name)
    adv, _ = _verl_call(name, tlr, mask, uid, kwargs, ex, data)
    direct_fields = {"rewards": tlr.sum(-1), "group": uid, "mask": mask, "token_rewards": tlr, **{
        f: v for f, v in extras.items() if f in Rollouts.__dataclass_fields__}}
    other = {f: v for f, v in extras.items() if f not in Rollouts.__dataclass_fields__}
    if other:
        direct_fields["extras"] = other
    if ex.reward_baselines is not None:
        direct_fields["reward_baselines"] = ex.reward_baselines.to(torch.float32)
    # verl's algorithm.gamma / lam (1.0 here) reach estimators that take them, unless hparams set them
    direct_kw = {**{k: 1.0 for k in ("gamma", "lam") if k in ESTIMATORS[name].defaults}, **kwargs}
    want = get_estimator(name, **direct_kw)(Rollouts(**direct_fields))
    m = mask.bool()
    torch.testing.assert_close(adv[m].double(), want.to(adv.dtype)[m].double(), rtol=0, atol=1e-6)


NEEDS_DATA = [n for n in WITH_EXAMPLE if set(ESTIMATORS[n].needs) - VERL_ARGS]


@pytest.mark.parametrize("name", NEEDS_DATA)
def test_an_estimator_without_a_declared_field_names_it(name):
    ex, kwargs, tlr, mask, uid, extras, data = _verl_inputs(name)
    missing = sorted(f for f in ESTIMATORS[name].needs if f not in VERL_ARGS)[0]
    key = gv.DEFAULT_FIELD_KEYS.get(missing, missing)
    data.batch.pop(key) if key in data.batch.keys() else data.non_tensor_batch.pop(key)
    with pytest.raises(ValueError, match=rf"needs the field '{missing}'.*DataProto under '{key}'"):
        _verl_call(name, tlr, mask, uid, kwargs, ex, data)


# ---------------------------------------------------------------------------------------- losses
def _loss_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T = 8, 4
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 3] = mask[5, 2:] = False
    tlr = torch.zeros(B, T)
    tlr[torch.arange(B), mask.sum(1) - 1] = torch.tensor([1.0, 0, 1, 1, 0, 0, 1, 0])
    uid = np.array(["p"] * 4 + ["q"] * 4, dtype=object)
    answer = np.array([1, 2, 1, 1, 3, 4, 5, 3])
    old = torch.randn(B, T, generator=g) - 1.0
    lp = (old + 0.3 * torch.randn(B, T, generator=g)).requires_grad_()
    adv = torch.randn(B, T, generator=g) * mask
    data = DataProto.from_dict(tensors={"token_level_rewards": tlr, "response_mask": mask.float()},
                               non_tensors={"uid": uid, "answer": answer})
    return old, lp, adv, mask, tlr, uid, answer, data


def _actor_config():
    # dro_beta: verl requires it for loss_mode dro; the plug-in maps it to dro's beta
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                       policy_loss=PolicyLossConfig(dro_beta=0.1))


def _verl_loss_call(name, old, lp, adv, mask, **extra):
    fn = core_algos.get_policy_loss_fn(f"grouprl.{name}")
    return fn(old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask, loss_agg_mode="token-mean",
              config=_actor_config(), rollout_is_weights=None, **extra)


# Losses taking a keyword that the wrapped ppo_loss fills from verl's model output (hapo:
# ``token_entropy``); called as verl calls them with nothing else, they name it.
FROM_MODEL_OUTPUT = sorted(n for n, i in LOSSES.items() if set(i.defaults) & set(gv.MODEL_OUTPUT_KEYWORDS))


def test_a_loss_needing_verls_model_output_names_it_outside_ppo_loss():
    assert FROM_MODEL_OUTPUT == ["hapo"]
    old, lp, adv, mask, *_ = _loss_batch()
    for name in FROM_MODEL_OUTPUT:
        with pytest.raises(ValueError, match=r"needs token_entropy=.*calculate_entropy=True|needs token_entropy=.*ppo_loss"):
            _verl_loss_call(name, old, lp, adv, mask)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_runs_under_verls_call_and_equals_the_direct_call(name):
    """verl's seven values, plus what the plug-in's wrappers add: the micro-batch holding the
    step's stored inputs (hooked losses) or the model output's entropy (token_entropy)."""
    old, lp, adv, mask, tlr, uid, answer, data = _loss_batch()
    info = LOSSES[name]
    extra = {}
    kw = dict(gv._actor_hparams(name, _actor_config(), info.defaults))
    kw.setdefault("respect_agg", name not in gv._VERL_OWN_AGG)
    direct_adv = adv
    if info.inputs is not None:  # the declared hook, on the batch built from the declared fields
        gv.store_loss_inputs(data, name)
        extra["grouprl_data"] = data
        li = info.inputs(Rollouts(rewards=tlr.sum(-1), group=uid, mask=mask, token_rewards=tlr,
                                  **{f: torch.as_tensor(answer) for f in info.needs}))
        direct_adv = li.advantages
        kw.update({**li.row_kwargs, **li.kwargs})
    if name in FROM_MODEL_OUTPUT:
        ent = torch.rand(mask.shape, generator=torch.Generator().manual_seed(5)) * 2
        extra["token_entropy"] = kw["token_entropy"] = ent
    loss, _ = _verl_loss_call(name, old, lp, adv, mask, **extra)
    want, _ = policy_loss(name, lp, old, direct_adv, mask, agg="token-mean", **kw)
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-7)


HOOKED = sorted(n for n, i in LOSSES.items() if i.inputs is not None)


@pytest.mark.parametrize("name", HOOKED)
def test_a_hooked_loss_without_its_declared_field_names_it(name):
    old, lp, adv, mask, tlr, uid, answer, data = _loss_batch()
    need = LOSSES[name].needs[0]
    with pytest.raises(ValueError, match=rf"'{need}'.*non_tensor_batch\['{need}'\].*trainer.use_v1=False"):
        _verl_loss_call(name, old, lp, adv, mask)  # verl's exact call: no step inputs
    with pytest.raises(ValueError, match=rf"'{need}'.*non_tensor_batch\['{need}'\].*trainer.use_v1=False"):
        _verl_loss_call(name, old, lp, adv, mask, grouprl_data=data)  # a DataProto without them
    data.non_tensor_batch.pop(need)
    with pytest.raises(ValueError, match=rf"needs the DataProto field '{need}'.*reward function.*non_tensor_batch\['{need}'\]"):
        gv.store_loss_inputs(data, name)


def test_copo_is_in_the_hooked_losses():
    """Guards the parametrisation above against an empty list (copo declares an inputs hook)."""
    assert "copo" in HOOKED and LOSSES["copo"].needs == ("answer",)


# ------------------------------------------------------------------------------------------- TRL
def test_trl_refuses_methods_whose_declared_needs_it_cannot_supply():
    """(The full sweep is tests/test_trl_declarations.py.)"""
    require("trl")
    from grouprl.advantages import get as get_est
    from grouprl.integrations.trl import TRL_SUPPLIES, check_declarations

    check_declarations(get_est("grpo"), "ppo_clip")  # supplied: no error
    check_declarations(get_est("maxmin"))  # reward_components is built from TRL's reward functions
    for name, info in ESTIMATORS.items():
        unsupplied = [f for f in info.needs if f not in TRL_SUPPLIES]
        if unsupplied:
            with pytest.raises(ValueError, match=rf"estimator '{name}' needs the batch field '{unsupplied[0]}'"):
                check_declarations(get_est(name))
    for name in HOOKED:
        with pytest.raises(ValueError, match=rf"policy loss '{name}' needs the batch field 'answer'"):
            check_declarations(get_est("grpo"), name)

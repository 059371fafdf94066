"""verl plug-in: grouprl estimators and losses called through verl 0.9.1's registries."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import require
import torch

require("verl")
core_algos = require("verl.trainer.ppo.core_algos")

from omegaconf import OmegaConf  # noqa: E402
from verl.protocol import DataProto  # noqa: E402
from verl.trainer.config import AlgoConfig  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402

from grouprl.advantages import ESTIMATORS, estimator  # noqa: E402
from grouprl.integrations import verl as gv  # noqa: E402
from grouprl.losses import AGG_MODES, LOSSES  # noqa: E402

REG = gv.register_all()


def verl_est(name):
    return core_algos.get_adv_estimator_fn(name)


def ragged(seed: int, *, T: int = 10, holes: bool = False):
    """Shuffled rows, uuid-like string uids, group sizes 1..6 (so some singletons), continuous
    rewards (no constant groups), ragged right-padded masks (or masks with holes)."""
    rng = random.Random(seed)
    rows = []
    for g in range(rng.randint(4, 9)):
        uid = f"{rng.getrandbits(64):016x}-{g}"
        for _ in range(rng.randint(1, 6)):
            L = rng.randint(1, T)
            if holes:
                m = [int(t < L and (t in (0, L - 1) or rng.random() < 0.7)) for t in range(T)]
            else:
                m = [1] * L + [0] * (T - L)
            rows.append((uid, rng.uniform(-2, 2), m))
    rng.shuffle(rows)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.tensor([r[2] for r in rows], dtype=torch.float32)
    B = mask.shape[0]
    last = (T - 1) - mask.flip(1).argmax(1)
    scores = torch.tensor([r[1] for r in rows])
    tlr = torch.zeros(B, T).scatter_(1, last.unsqueeze(1), scores.unsqueeze(1))
    index = np.array([r[0] for r in rows], dtype=object)
    return tlr, mask, index, torch.randn(B, T, generator=gen)


def close_on_mask(a, b, mask, atol=1e-5):
    m = mask.bool()
    diff = (a[m].double() - b[m].double()).abs().max().item()
    assert diff <= atol, f"max |diff| on valid tokens = {diff}"


def raw(**hp):
    return {"grouprl": {"hparams": {"singleton": "raw", **hp}}}


# ------------------------------------------------------------------------------ registration
def test_every_estimator_and_loss_is_registered_and_registration_is_idempotent():
    reg = gv.register_all()  # other test modules may have registered estimators since import
    assert set(reg["estimators"]) == {f"grouprl.{n}" for n in ESTIMATORS} | {"grouprl.expr"}
    assert set(reg["losses"]) == {f"grouprl.{n}" for n in LOSSES}
    for n in reg["estimators"]:
        assert n in core_algos.ADV_ESTIMATOR_REGISTRY
    for n in reg["losses"]:
        assert core_algos.get_policy_loss_fn(n) is gv.make_policy_loss(n[len("grouprl.") :])
    again = gv.register_all()  # same adapter objects: verl's decorator accepts them
    assert again == reg
    assert core_algos.ADV_ESTIMATOR_REGISTRY["grpo"] is core_algos.compute_grpo_outcome_advantage


def test_import_grouprl_integrations_is_lazy():
    code = "import sys, grouprl.integrations; print([m for m in ('verl', 'trl', 'ray') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plugin_activates_through_verl_external_modules_env():
    code = textwrap.dedent(
        """
        import verl
        from verl.trainer.ppo import core_algos
        print("grouprl.grpo" in core_algos.ADV_ESTIMATOR_REGISTRY, "grouprl.ppo_clip" in core_algos.POLICY_LOSS_REGISTRY)
        from verl.workers.utils.losses import ppo_loss  # imported after the plug-in: wrapped on import
        print(getattr(ppo_loss, "_grouprl_passthrough", False))
        """
    )
    env = dict(os.environ, VERL_USE_EXTERNAL_MODULES="grouprl.integrations.verl_plugin", VERL_USE_EXTERNAL_PLUGINS="none")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["True", "True", "True"]


# ------------------------------------------------------------------- parity through the registry
@pytest.mark.parametrize("seed", range(6))
def test_grpo_rloo_rpp_baseline_match_verl_through_registry(seed):
    tlr, mask, index, _ = ragged(seed)
    for ours, theirs in [
        ("grouprl.grpo", "grpo"),
        ("grouprl.grpo", "grpo_vectorized"),
        ("grouprl.rloo", "rloo"),
        ("grouprl.reinforce_pp_baseline", "reinforce_plus_plus_baseline"),
    ]:
        a, ra = verl_est(ours)(token_level_rewards=tlr, response_mask=mask, index=index, config=raw())
        b, _ = verl_est(theirs)(token_level_rewards=tlr.clone(), response_mask=mask, index=index)
        close_on_mask(a, b, mask)
        assert torch.equal(ra, a), "outcome estimators return advantages twice"
        assert a.dtype == torch.float32 and bool((a[mask == 0] == 0).all())
    # Dr. GRPO: verl's norm_adv_by_std_in_grpo=False
    a, _ = verl_est("grouprl.dr_grpo")(token_level_rewards=tlr, response_mask=mask, index=index, config=raw())
    b, _ = core_algos.compute_grpo_outcome_advantage(tlr.clone(), mask, index, norm_adv_by_std_in_grpo=False)
    close_on_mask(a, b, mask)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("holes", [False, True])
def test_gae_matches_verl_with_returns(seed, holes, monkeypatch):
    tlr, mask, index, values = ragged(seed, holes=holes)
    tlr = tlr + 0.1 * torch.randn(tlr.shape, generator=torch.Generator().manual_seed(seed)) * mask
    gamma, lam = 0.99, 0.95
    theirs_adv, theirs_ret = core_algos.compute_gae_advantage_return(tlr, values, mask, gamma, lam)
    data = DataProto.from_dict(tensors={"token_level_rewards": tlr, "response_mask": mask, "values": values})
    cfg = OmegaConf.create({"gamma": gamma, "lam": lam})  # verl's algorithm.gamma / algorithm.lam
    adv, ret = verl_est("grouprl.gae")(
        token_level_rewards=tlr, response_mask=mask, index=index, config=cfg, grouprl_data=data
    )
    close_on_mask(adv, theirs_adv, mask)
    close_on_mask(ret, theirs_ret, mask)
    assert not torch.equal(adv, ret)


def test_deliberate_differences_constant_group_and_singleton():
    # eight rewards of 0.7: grouprl gives exactly 0, verl's float32 mean leaves |A| ~ 0.056
    B, T = 9, 4
    tlr = torch.zeros(B, T)
    tlr[:, -1] = torch.tensor([0.7] * 8 + [1.5])
    mask = torch.ones(B, T)
    index = np.array(["c"] * 8 + ["single"], dtype=object)
    ours, _ = verl_est("grouprl.grpo")(token_level_rewards=tlr, response_mask=mask, index=index, config=None)
    theirs, _ = core_algos.compute_grpo_outcome_advantage(tlr.clone(), mask, index)
    assert bool((ours[:8] == 0).all())
    assert float(theirs[:8].abs().max()) > 1e-2  # documented float32 residue in verl 0.9.1
    # a group of one: grouprl's default is 0 (no relative signal), verl's is the raw score
    assert bool((ours[8] == 0).all())
    assert torch.allclose(theirs[8], torch.full((T,), 1.5))
    raw_ours, _ = verl_est("grouprl.grpo")(token_level_rewards=tlr, response_mask=mask, index=index, config=raw())
    assert torch.allclose(raw_ours[8], torch.full((T,), 1.5))


# ------------------------------------------------------------------------------------- config
def test_config_forms_expression_and_errors():
    tlr, mask, index, _ = ragged(0)
    fn = verl_est("grouprl.grpo")
    base, _ = fn(token_level_rewards=tlr, response_mask=mask, index=index, config=AlgoConfig())
    as_dict, _ = fn(token_level_rewards=tlr, response_mask=mask, index=index, config={"grouprl": {}})
    omega, _ = fn(
        token_level_rewards=tlr, response_mask=mask, index=index,
        config=OmegaConf.create({"adv_estimator": "grouprl.grpo", "grouprl": {"hparams": {"eps": 1e-4}}}),
    )
    assert torch.equal(base, as_dict)
    assert not torch.equal(base, omega)  # eps reached the estimator
    # expression: 0.5*grpo + 0.5*rloo
    expr_cfg = {"grouprl": {"expr": "0.5*grpo + 0.5*rloo", "hparams": {"singleton": "raw"}}}
    e, _ = verl_est("grouprl.expr")(token_level_rewards=tlr, response_mask=mask, index=index, config=expr_cfg)
    g, _ = fn(token_level_rewards=tlr, response_mask=mask, index=index, config=raw())
    r, _ = verl_est("grouprl.rloo")(token_level_rewards=tlr, response_mask=mask, index=index, config=raw())
    close_on_mask(e, 0.5 * g + 0.5 * r, mask, atol=1e-6)
    with pytest.raises(ValueError, match="unknown key 'hparam'"):
        fn(token_level_rewards=tlr, response_mask=mask, index=index, config={"grouprl": {"hparam": {}}})
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        fn(token_level_rewards=tlr, response_mask=mask, index=index, config={"grouprl": {"hparams": {"epsilon": 1}}})
    with pytest.raises(ValueError, match="uid"):
        fn(token_level_rewards=tlr, response_mask=mask, config=None)
    with pytest.raises(ValueError, match="algorithm.grouprl.expr"):
        verl_est("grouprl.expr")(token_level_rewards=tlr, response_mask=mask, index=index, config=None)
    # GAE without the pass-through: the dispatcher does not pass values
    with pytest.raises(ValueError, match="install_field_passthrough"):
        verl_est("grouprl.gae")(token_level_rewards=tlr, response_mask=mask, index=index, config=None)


# ------------------------------------------------------------------------- field pass-through
FAKE_TRAINER = '''
"""A stand-in for verl.trainer.ppo.ray_trainer (whose import needs vLLM/FastAPI-era packages):
its compute_advantage has verl 0.9.1's signature and, like verl's generic branch, hands a
registered estimator only token_level_rewards, response_mask, config and the uid index."""
from verl.trainer.ppo import core_algos

CALLS = []


def compute_response_mask(data):
    raise AssertionError("the test batches carry a response_mask")


def compute_advantage(data, adv_estimator, gamma=1.0, lam=1.0, num_repeat=1,
                      norm_adv_by_std_in_grpo=True, config=None):
    CALLS.append(adv_estimator)
    fn = core_algos.get_adv_estimator_fn(adv_estimator)
    kwargs = {"token_level_rewards": data.batch["token_level_rewards"],
              "response_mask": data.batch["response_mask"], "config": config}
    if "uid" in data.non_tensor_batch:
        kwargs["index"] = data.non_tensor_batch["uid"]
    data.batch["advantages"], data.batch["returns"] = fn(**kwargs)
    return data
'''
FAKE_USER = '''
from {trainer} import compute_advantage  # bound by name at import, like verl's v1 utils


def run(*args, **kwargs):
    return compute_advantage(*args, **kwargs)
'''


def _step_centered(batch, *, scale: float = 1.0):
    """Test estimator: reward minus the mean reward of the same step id (needs ``step``)."""
    from grouprl.core import group_stats

    st = group_stats(batch.rewards, batch.step, int(batch.step.max()) + 1)
    return scale * st.centered(batch.rewards)


@pytest.fixture
def step_estimator():
    """Registers a test estimator that needs ``step`` (grouprl and verl), removed afterwards."""
    estimator("_test_step_centered", needs=("rewards", "group", "mask", "step"))(_step_centered)
    gv.register_all()
    yield "grouprl._test_step_centered"
    ESTIMATORS._items.pop("_test_step_centered", None)
    core_algos.ADV_ESTIMATOR_REGISTRY.pop("grouprl._test_step_centered", None)
    gv._EST_ADAPTERS.pop("_test_step_centered", None)


def test_field_passthrough_never_runs_a_lazy_modules_getattr(tmp_path, monkeypatch):
    """The patch rebinds modules that imported ``compute_advantage`` before it, reading each
    module's namespace by key: a lazy module whose ``__getattr__`` raises (transformers' does when a
    vision processor's dependency is missing) is neither touched nor able to break the import."""
    import types

    name = f"fake_ray_trainer_lazy_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(FAKE_TRAINER)
    monkeypatch.syspath_prepend(str(tmp_path))

    class Lazy(types.ModuleType):
        def __getattr__(self, item):
            raise ModuleNotFoundError(f"lazy module: importing {item} needs torchvision")

    lazy = Lazy(f"{name}_lazy")
    early = types.ModuleType(f"{name}_early")  # bound the name before the patch, like verl's v1 utils
    monkeypatch.setitem(sys.modules, lazy.__name__, lazy)
    import importlib

    assert gv.install_field_passthrough(module=name) is False
    # the hook's target module, loaded by the import system with the lazy module present
    trainer = importlib.import_module(name)
    assert getattr(trainer.compute_advantage, "_grouprl_passthrough", False)
    with pytest.raises(ModuleNotFoundError):
        lazy.compute_advantage  # noqa: B018 - the lazy module still raises on access: it was never asked
    # a module that bound the original before the patch is rebound
    early.compute_advantage = trainer.compute_advantage.__wrapped__
    monkeypatch.setitem(sys.modules, early.__name__, early)
    trainer.compute_advantage = trainer.compute_advantage.__wrapped__
    gv._wrap_compute_advantage(trainer, gv.PREFIX)
    assert early.compute_advantage is trainer.compute_advantage
    assert getattr(early.compute_advantage, "_grouprl_passthrough", False)


def test_field_passthrough_via_import_hook(tmp_path, monkeypatch, step_estimator):
    name = f"fake_ray_trainer_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(FAKE_TRAINER)
    (tmp_path / f"{name}_user.py").write_text(FAKE_USER.format(trainer=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert gv.install_field_passthrough(module=name) is False  # deferred: not imported yet
    import importlib

    trainer = importlib.import_module(name)  # the hook patches it now
    user = importlib.import_module(f"{name}_user")
    assert getattr(trainer.compute_advantage, "_grouprl_passthrough", False)
    assert gv.install_field_passthrough(module=name) is True  # idempotent

    tlr, mask, index, values = ragged(3)
    B = mask.shape[0]
    steps = np.array([i % 3 for i in range(B)])
    data = DataProto.from_dict(
        tensors={"token_level_rewards": tlr, "response_mask": mask, "values": values},
        non_tensors={"uid": index, "step_ids": steps},
    )
    # GAE reads values from the DataProto
    cfg = OmegaConf.create({"gamma": 0.9, "lam": 0.8})
    out = user.run(data, "grouprl.gae", config=cfg)
    a, r = core_algos.compute_gae_advantage_return(tlr, values, mask, 0.9, 0.8)
    close_on_mask(out.batch["advantages"], a, mask)
    close_on_mask(out.batch["returns"], r, mask)
    # a per-row field from non_tensor_batch, mapped with algorithm.grouprl.fields
    cfg = OmegaConf.create({"grouprl": {"fields": {"step": "step_ids"}, "hparams": {"scale": 2.0}}})
    out = user.run(data, "grouprl._test_step_centered", config=cfg)
    s = tlr.sum(-1)
    st = torch.tensor(steps)
    means = torch.stack([s[st == k].mean() for k in range(3)])
    close_on_mask(out.batch["advantages"], (2.0 * (s - means[st])).unsqueeze(1) * mask, mask)
    # verl's own estimators go through the original function
    calls_before = len(trainer.CALLS)
    out = user.run(data, "rloo")
    assert len(trainer.CALLS) == calls_before + 1
    b, _ = core_algos.compute_rloo_outcome_advantage(tlr.clone(), mask, index)
    close_on_mask(out.batch["advantages"], b, mask, atol=0)
    # a missing field names the key and the fix
    with pytest.raises(ValueError, match="step_idz"):
        user.run(data, "grouprl._test_step_centered", config={"grouprl": {"fields": {"step": "step_idz"}}})


# ------------------------------------------------------------------------------------- losses
def actor_config(dp_size=2, **kw):
    cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, **kw)
    return cfg


@pytest.mark.parametrize("agg", AGG_MODES)
def test_ppo_clip_matches_verl_vanilla_through_registry(agg):
    gen = torch.Generator().manual_seed(1)
    B, T = 6, 7
    mask = (torch.arange(T) < torch.randint(1, T + 1, (B, 1), generator=gen)).float()
    old = -torch.rand(B, T, generator=gen) * 2
    new0 = old + 0.4 * torch.randn(B, T, generator=gen)
    adv = torch.randn(B, 1, generator=gen).expand(B, T) * mask
    isw = 0.5 + torch.rand(B, T, generator=gen)
    cfg = actor_config(clip_ratio_low=0.2, clip_ratio_high=0.28)
    cfg.global_batch_info.update(
        dp_size=2, batch_num_tokens=int(mask.sum()) * 2, global_batch_size=B * 2, loss_scale_factor=16
    )
    results = []
    for name in ("grouprl.ppo_clip", "vanilla"):
        new = new0.clone().requires_grad_(True)
        loss, metrics = core_algos.get_policy_loss_fn(name)(
            old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask,
            loss_agg_mode=agg, config=cfg, rollout_is_weights=isw,
        )
        loss.backward()
        assert all(isinstance(v, float) for v in metrics.values())
        results.append((loss.detach(), new.grad.clone(), metrics))
    (l1, g1, m1), (l2, g2, m2) = results
    torch.testing.assert_close(l1, l2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)
    # metrics: this micro-batch's means, verl's names
    assert abs(m1["actor/ppo_kl"] - m2["actor/ppo_kl"]) < 1e-6
    assert abs(m1["actor/pg_clipfrac"] - m2["actor/pg_clipfrac"]) < 1e-6
    assert m2["actor/pg_clipfrac"] > 0


def test_loss_hparams_from_env_and_errors(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    B, T = 4, 5
    mask = torch.ones(B, T)
    old = -torch.rand(B, T, generator=gen)
    new = old + 0.5 * torch.randn(B, T, generator=gen)
    adv = torch.randn(B, T, generator=gen)
    fn = core_algos.get_policy_loss_fn("grouprl.ppo_clip")
    cfg = actor_config()
    base, _ = fn(old, new, adv, mask, "token-mean", cfg, None)
    monkeypatch.setenv(gv.LOSS_HPARAMS_ENV, '{"ppo_clip": {"eps_high": 0.01}}')
    tight, _ = fn(old, new, adv, mask, "token-mean", cfg, None)
    assert not torch.allclose(base, tight)
    monkeypatch.setenv(gv.LOSS_HPARAMS_ENV, '{"eps_hihg": 0.01}')
    with pytest.raises(TypeError, match="eps_hihg"):
        fn(old, new, adv, mask, "token-mean", cfg, None)
    monkeypatch.setenv(gv.LOSS_HPARAMS_ENV, "{not json")
    with pytest.raises(ValueError, match="JSON"):
        fn(old, new, adv, mask, "token-mean", cfg, None)


# ---------------------------------------------------------------- every estimator, its example
def _example_case(info):
    ex = dict(info.example)
    kwargs = ex.pop("kwargs", {})
    rewards = torch.tensor(ex.pop("rewards"), dtype=torch.float32)
    group = ex.pop("group")
    B = rewards.shape[0]
    mask = torch.tensor(ex.pop("mask"), dtype=torch.float32) if "mask" in ex else torch.ones(B, 1)
    if "token_rewards" in ex:
        tlr = torch.tensor(ex.pop("token_rewards"), dtype=torch.float32) * mask
        if not torch.allclose(tlr.sum(-1), rewards):
            return None  # verl derives the outcome score from the token rewards; not representable
    else:
        last = (mask.shape[1] - 1) - mask.flip(1).argmax(1)
        tlr = torch.zeros_like(mask).scatter_(1, last.unsqueeze(1), rewards.unsqueeze(1))
    tensors, non_tensors = {"token_level_rewards": tlr, "response_mask": mask}, {}
    extras = ex.pop("extras", {})
    for field, value in {**ex, **extras}.items():
        key = gv.DEFAULT_FIELD_KEYS.get(field, field)
        arr = np.asarray(value)
        if arr.dtype.kind in "fiub":
            tensors[key] = torch.as_tensor(arr)
        else:
            non_tensors[key] = arr
    index = np.array([f"g{g}" for g in group], dtype=object)
    non_tensors["uid"] = index
    direct = {"rewards": rewards, "group": group, "mask": mask, **ex, **extras}
    return tlr, mask, index, DataProto.from_dict(tensors=tensors, non_tensors=non_tensors), kwargs, direct


@pytest.mark.parametrize("name", [n for n in ESTIMATORS if ESTIMATORS[n].example is not None])
def test_every_estimator_example_through_verl_matches_direct_call(name):
    from grouprl import Rollouts, compute_advantages
    from grouprl.core.batch import ROW_FIELDS, TOKEN_FIELDS

    case = _example_case(ESTIMATORS[name])
    assert case is not None, f"{name}: its example's token rewards do not sum to its rewards"
    tlr, mask, index, data, kwargs, direct = case
    known = set(TOKEN_FIELDS) | set(ROW_FIELDS) | {"rewards", "group", "mask", "reward_components"}
    extras = {k: torch.as_tensor(np.asarray(direct.pop(k))) for k in list(direct) if k not in known}
    expect = compute_advantages(name, Rollouts(**direct, extras=extras), **kwargs)
    # every field of the example is mapped explicitly (estimators may read optional fields)
    fields = {f: gv.DEFAULT_FIELD_KEYS.get(f, f) for f in direct if f not in ("rewards", "group", "mask")}
    fields.update({f: f for f in extras})
    cfg = {"grouprl": {"hparams": kwargs, "fields": fields}}
    adv, _ = verl_est(f"grouprl.{name}")(
        token_level_rewards=tlr, response_mask=mask, index=index, config=cfg, grouprl_data=data,
        reward_baselines=data.batch["reward_baselines"] if "reward_baselines" in data.batch.keys() else None,
    )
    torch.testing.assert_close(adv, expect, atol=1e-6, rtol=1e-6)


def test_actor_fields_map_only_for_losses_that_restate_a_verl_loss():
    cfg = actor_config(clip_ratio_low=0.1, clip_ratio_high=0.3, tau_pos=2.0)
    defaults = {"eps_low": 0.2, "eps_high": None, "clip_ratio_c": None, "tau_pos": 1.0}
    assert gv._actor_hparams("ppo_clip", cfg, defaults) == {"eps_low": 0.1, "eps_high": 0.3, "clip_ratio_c": 3.0}
    assert gv._actor_hparams("sapo", cfg, defaults) == {"tau_pos": 2.0}
    assert gv._actor_hparams("some_method_clip", cfg, defaults) == {}  # keeps its own defaults
    cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                      policy_loss={"loss_mode": "grouprl.dro", "dro_beta": 0.5})
    assert gv._actor_hparams("dro", cfg, {"beta": None}) == {"beta": 0.5}


@pytest.mark.parametrize(
    "ours,theirs", [("gspo", "gspo"), ("cispo", "cispo"), ("sapo", "sapo"), ("gmpo", "geo_mean"), ("dro", "dro"), ("gpg", "gpg")]
)
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_other_losses_match_verl_through_registry(ours, theirs, agg):
    from verl.workers.config import PolicyLossConfig

    gen = torch.Generator().manual_seed(3)
    B, T = 6, 7
    mask = (torch.arange(T) < torch.randint(1, T + 1, (B, 1), generator=gen)).float()
    old = -torch.rand(B, T, generator=gen) * 2
    new0 = old + 0.4 * torch.randn(B, T, generator=gen)
    adv = torch.randn(B, 1, generator=gen).expand(B, T) * mask
    isw = 0.5 + torch.rand(B, T, generator=gen)
    cfg = actor_config(clip_ratio_low=0.2, clip_ratio_high=0.28, policy_loss=PolicyLossConfig(dro_beta=0.3))
    cfg.global_batch_info.update(
        dp_size=2, batch_num_tokens=int(mask.sum()) * 2, global_batch_size=B * 2, loss_scale_factor=16
    )
    out = []
    for name in (f"grouprl.{ours}", theirs):
        new = new0.clone().requires_grad_(True)
        loss, _ = core_algos.get_policy_loss_fn(name)(
            old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask,
            loss_agg_mode=agg, config=cfg, rollout_is_weights=isw,
        )
        loss.backward()
        out.append((loss.detach(), new.grad.clone()))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-6, rtol=1e-5)
    assert float(out[1][1].abs().max()) > 0

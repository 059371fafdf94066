"""MaxMin-RLHF end to end (arXiv:2402.08925): preference JSONL -> EM (``grouprl fit-rewards``) ->
reward models (safetensors) -> ``grouprl train estimator=maxmin reward_models=DIR``; the trainer's
MaxMin wiring checked in the loop against values recomputed here from the paper's equations."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from grouprl import Rollouts
from grouprl.cli import app
from grouprl.rewards.preferences import (
    FEATURES,
    PreferenceError,
    RewardModels,
    fit_preference_models,
    load_preferences,
    text_features,
)
from grouprl.train import ConfigError, build_config, train
from grouprl.train.logging import read_jsonl
from grouprl.train.methods import MethodHooks
from test_train import tiny_overrides

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _population():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import maxmin_population
    finally:
        sys.path.remove(str(EXAMPLES))
    return maxmin_population


# ------------------------------------------------------------------ data format
def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_preferences(tmp_path):
    p = _write(tmp_path / "d.jsonl", [
        {"user": "u1", "prompt": "1+1=", "chosen": "2", "rejected": "3"},
        "",
        {"user": 7, "prompt": "x", "chosen": "a", "rejected": "b", "meta": {"group": "A"}},
    ])
    d = load_preferences(p)
    assert d.users == ["u1", 7] and d.chosen == ["2", "a"] and d.rejected == ["3", "b"] and len(d) == 2
    assert d.meta == [{}, {"group": "A"}]


@pytest.mark.parametrize("bad,line,field", [
    ('{"user": "u", "prompt": "p", "chosen": "a"}', 2, "'rejected'"),
    ('{"user": "u", "prompt": "p", "chosen": 5, "rejected": "b"}', 2, "'chosen'"),
    ('{"user": "u", "prompt": "p", "chosen": "a", "rejected": "b", "grp": 1}', 2, "'grp': unknown field"),
    ('{"user": 1.5, "prompt": "p", "chosen": "a", "rejected": "b"}', 2, "'user'"),
    ('{"user": "u", "prompt": "p",', 2, "not valid JSON"),
    ('["u", "p", "a", "b"]', 2, "got a JSON list"),
])
def test_load_preferences_names_line_and_field(tmp_path, bad, line, field):
    good = '{"user": "u", "prompt": "p", "chosen": "a", "rejected": "b"}'
    p = _write(tmp_path / "d.jsonl", [good, bad])
    with pytest.raises(PreferenceError) as e:
        load_preferences(p)
    assert f"d.jsonl:{line}:" in str(e.value) and field in str(e.value)
    assert '"chosen": str' in str(e.value)  # the format, as the fix


def test_load_preferences_empty_or_missing(tmp_path):
    with pytest.raises(PreferenceError, match="no preference pairs"):
        load_preferences(_write(tmp_path / "e.jsonl", [""]))
    with pytest.raises(PreferenceError, match="no such file"):
        load_preferences(tmp_path / "nope.jsonl")


def _features_by_hand(t: str) -> list[float]:
    n = len(t)
    if n == 0:
        return [0.0] * 6
    low = sum(c in "01234" for c in t)
    high = sum(c in "56789" for c in t)
    let = sum(c.isascii() and c.isalpha() for c in t)
    sp = sum(c in " \t\n\r" for c in t)
    return [n / 10, low / n, high / n, let / n, sp / n, (n - low - high - let - sp) / n]


def test_text_features_by_hand():
    texts = ["", "0459", "ab 9!", "é", "  ", "99999999999"]
    want = torch.tensor([_features_by_hand(t) for t in texts], dtype=torch.float64)
    assert torch.allclose(text_features(texts), want, rtol=0, atol=1e-15)
    assert text_features(["0459"])[0].tolist() == [0.4, 0.5, 0.5, 0.0, 0.0, 0.0]
    assert text_features([]).shape == (0, len(FEATURES))


# ------------------------------------------------------------------ fit and save
def test_fit_recovers_the_synthetic_population(tmp_path):
    pop = _population()
    pop.generate(str(tmp_path / "pop.jsonl"), ratio="8:2", users=10, pairs=40, seed=0)
    data = load_preferences(tmp_path / "pop.jsonl")
    models, fit = fit_preference_models(data, 2, restarts=3, seed=0)
    man = models.manifest
    truth = {u: m["group"] for u, m in zip(data.users, data.meta)}
    clusters = {g: {man["assignment"][u] for u in truth if truth[u] == g} for g in "AB"}
    assert len(clusters["A"]) == 1 and len(clusters["B"]) == 1 and clusters["A"] != clusters["B"]
    a, b = clusters["A"].pop(), clusters["B"].pop()
    assert man["cluster_users"][a] == 8 and man["mixture_weights"][b] == pytest.approx(0.2)
    i_low, i_high, i_let = (FEATURES.index(n) for n in ("low_digits", "high_digits", "letters"))
    th = models.theta
    assert th[a, i_low] > max(th[a, i_high], th[a, i_let]) and th[b, i_high] > max(th[b, i_low], th[b, i_let])
    # reference statistics: each model's reward over every chosen and rejected response
    r = text_features(data.chosen + data.rejected) @ models.theta.T
    assert man["ref_mean"] == pytest.approx(r.mean(0).tolist(), rel=1e-12)
    assert man["ref_std"] == pytest.approx(r.std(0).tolist(), rel=1e-12)
    assert man["restarts"] == 3 and len(man["restart_log_likelihoods"]) == 3
    assert man["log_likelihood"] == max(man["restart_log_likelihoods"]) == fit.objective
    models.save(tmp_path / "rm")
    back = RewardModels.load(tmp_path / "rm")
    assert torch.equal(back.theta, models.theta) and back.manifest == json.loads(json.dumps(man))
    texts = ["0123", "98", ""]
    assert torch.equal(back.score(None, texts), text_features(texts) @ models.theta.T)


def test_fit_gives_no_reward_to_what_the_data_never_vary():
    # digit-only responses: letters / spaces / other never differ between chosen and rejected, and
    # low_digits + high_digits = 1 always; θ is the minimum-norm one, 0 on those directions
    from grouprl.rewards.preferences import PreferenceData

    ch = ["1", "22", "034", "5", "12", "4"] * 3
    rj = ["9", "86", "7", "58", "9", "67"] * 3
    data = PreferenceData(users=["a", "b", "c"] * 6, prompts=["p"] * 18, chosen=ch, rejected=rj)
    models, _ = fit_preference_models(data, 1, restarts=1)
    th = models.theta[0]
    assert th[3:].abs().max() < 1e-12
    assert float(th[1] + th[2]) == pytest.approx(0.0, abs=1e-12) and float(th[1]) > 0


def test_reward_models_load_errors(tmp_path):
    with pytest.raises(PreferenceError, match="grouprl fit-rewards"):
        RewardModels.load(tmp_path)
    RewardModels(torch.zeros(2, 6, dtype=torch.float64), {"format": "grouprl-reward-models", "features": "chars-v1",
                                                          "K": 3}).save(tmp_path / "x")
    with pytest.raises(PreferenceError, match=r"shape \(2, 6\)"):
        RewardModels.load(tmp_path / "x")


def test_fit_rewards_cli(tmp_path):
    pop = _population()
    pop.generate(str(tmp_path / "pop.jsonl"), ratio="7:3", users=10, pairs=30, seed=1)
    runner = CliRunner()
    out = tmp_path / "rm"
    res = runner.invoke(app, ["fit-rewards", str(tmp_path / "pop.jsonl"), "--clusters", "2", "--out", str(out),
                              "--restarts", "2"])
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["K"] == 2 and sorted(man["cluster_users"]) == [3, 7] and (out / "reward_models.safetensors").is_file()
    res = runner.invoke(app, ["fit-rewards", str(tmp_path / "pop.jsonl"), "--clusters", "2", "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.output
    # the example config takes the fitted directory; zscore gets the manifest's reference statistics
    from grouprl.train import load_config
    from grouprl.train.methods import estimator_hparams

    cfg = load_config(EXAMPLES / "maxmin.yaml", {"reward_models": str(out)})
    assert estimator_hparams(cfg)["ref_mean"] == man["ref_mean"]
    _write(tmp_path / "bad.jsonl", ['{"user": "u", "prompt": "p", "chosen": "a"}'])
    res = runner.invoke(app, ["fit-rewards", str(tmp_path / "bad.jsonl"), "--clusters", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "bad.jsonl:1" in res.output and "rejected" in res.output
    # more clusters than users: the empty cluster is reported
    _write(tmp_path / "one.jsonl", ['{"user": "u", "prompt": "p", "chosen": "1", "rejected": "9"}'])
    res = runner.invoke(app, ["fit-rewards", str(tmp_path / "one.jsonl"), "--clusters", "2", "--out", str(tmp_path / "o1")])
    assert res.exit_code == 0 and "warning" in res.output and "no users" in res.output


# ------------------------------------------------------------------ config wiring
def _models(tmp_path, theta=None) -> Path:
    theta = torch.tensor([[0.0, 1.0, -1.0, 0.5, 0.0, 0.0], [0.3, -1.0, 1.0, 0.0, 0.0, -0.5]], dtype=torch.float64) \
        if theta is None else theta
    man = {"format": "grouprl-reward-models", "features": "chars-v1", "K": int(theta.shape[0]),
           "ref_mean": [0.1, -0.2][: theta.shape[0]], "ref_std": [0.5, 2.0][: theta.shape[0]]}
    return RewardModels(theta, man).save(tmp_path / "rm")


def test_config_errors(tmp_path):
    rm = str(_models(tmp_path))
    with pytest.raises(ConfigError, match="does not read reward_components"):
        build_config(tiny_overrides(tmp_path, reward_models=rm))  # estimator grpo
    with pytest.raises(ConfigError, match="reads reward_components: set reward_models=DIR"):
        build_config(tiny_overrides(tmp_path, estimator="0.5*maxmin + 0.5*grpo"))
    with pytest.raises(ConfigError, match="not both"):
        build_config(tiny_overrides(tmp_path, estimator="maxmin", reward_models=rm, reward_components=["task"]))
    with pytest.raises(ConfigError, match="lacks manifest.json"):
        build_config(tiny_overrides(tmp_path, estimator="maxmin", reward_models=str(tmp_path / "none")))
    with pytest.raises(ConfigError, match="needs reference statistics"):
        build_config(tiny_overrides(tmp_path, estimator="maxmin", reward_components=["task", "task"],
                                    estimator_kwargs={"normalize": "zscore"}))
    with pytest.raises(ConfigError, match="estimator 'maxmin' has no keyword 'nromalize'; did you mean 'normalize'"):
        build_config(tiny_overrides(tmp_path, estimator="maxmin", reward_models=rm, estimator_kwargs={"nromalize": "none"}))
    res = CliRunner().invoke(app, ["train", "estimator=maxmin", f"out_dir={tmp_path}"])
    assert res.exit_code == 2 and "reward_components=[task, mymodule:fn, ...]" in " ".join(res.output.split())
    # with reward models, zscore takes the manifest's reference statistics
    cfg = build_config(tiny_overrides(tmp_path, estimator="maxmin", reward_models=rm, estimator_kwargs={"normalize": "zscore"}))
    from grouprl.train.methods import reward_component_fns

    hooks = MethodHooks(cfg, None, reward_component_fns(cfg, None, None))
    assert hooks.est_kwargs == {"normalize": "zscore", "ref_mean": [0.1, -0.2], "ref_std": [0.5, 2.0]}


def test_kl_in_reward_applies_to_every_component(tmp_path):
    """F_u = E[r_u] − β·KL (arXiv:2402.08925 §2.2): the loop's in-reward KL, Σ_t (log π_old − log π_ref)
    of each response, is subtracted from every column, not only from ``rewards``."""
    cfg = build_config(tiny_overrides(tmp_path, estimator="maxmin", reward_components=["task", "task"],
                                      kl_coef=0.5, kl_in_reward=True))
    cols = [torch.tensor([1.0, 0.5, 1.0, 0.5]), torch.tensor([0.5, 0.0, 0.5, 0.0])]  # means 0.75 and 0.25
    hooks = MethodHooks(cfg, None, [lambda ex, t, c=c: c for c in cols])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]], dtype=torch.bool)
    old = torch.tensor([[-0.5, -1.0], [-0.2, -9.0], [-1.0, -1.0], [-0.1, -0.1]])
    ref = torch.tensor([[-1.0, -1.5], [-0.4, 0.0], [-1.0, -1.0], [-0.3, -0.3]])
    # KL per row: 0.5 + 0.5 = 1.0; 0.2 (the masked token is ignored); 0; 0.4
    b = Rollouts(rewards=torch.zeros(4), group=torch.tensor([0, 0, 1, 1]), mask=mask, old_logprobs=old, ref_logprobs=ref)
    out = hooks.prepare(b, ["a"] * 4, [None] * 4)
    want = torch.tensor([[0.5, 0.0], [0.4, -0.1], [1.0, 0.5], [0.3, -0.2]])
    assert torch.allclose(out.reward_components, want, atol=1e-7)
    # the worst group is 1 (mean −0.2 + ... = 0.05 < 0.55); MaxMin trains on its penalised column
    assert torch.allclose(out.rewards, want[:, 1], atol=1e-7)
    m = hooks.metrics()
    assert m["maxmin/worst_group"] == 1.0
    assert m["maxmin/F_0"] == pytest.approx(0.55, abs=1e-7) and m["maxmin/F_1"] == pytest.approx(0.05, abs=1e-7)
    adv = hooks.advantages(out, 0)
    # GRPO on (0, −0.1 | 0.5, −0.2): ±0.05/(0.0707107 + 1e-6) and ±0.35/(0.4949747 + 1e-6)
    a1 = 0.05 / (math.sqrt(0.005) + 1e-6)
    a2 = 0.35 / (math.sqrt(0.245) + 1e-6)
    assert adv[:, 0].tolist() == pytest.approx([a1, -a1, a2, -a2], rel=1e-5)


def test_overlong_shaping_applies_to_every_component(tmp_path):
    # L_max = 3, L_cache = 2: lengths 1, 2, 3 -> penalties 0, −0.5, −1 (DAPO's ramp), on every column
    cfg = build_config(tiny_overrides(tmp_path, estimator="maxmin", reward_components=["task", "task"],
                                      overlong_buffer=2))
    cols = [torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2.0, 0.0, 3.0])]
    hooks = MethodHooks(cfg, None, [lambda ex, t, c=c: c for c in cols])
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    out = hooks.prepare(Rollouts(rewards=torch.ones(3), group=torch.zeros(3, dtype=torch.long), mask=mask),
                        ["a"] * 3, [None] * 3)
    assert out.reward_components.tolist() == [[1.0, 2.0], [0.5, -0.5], [0.0, 2.0]]
    assert out.rewards.tolist() == [1.0, 0.5, 0.0]  # group 0 (mean 0.5 < 1.167) is the worst off


# ------------------------------------------------------------------ in the loop
class _Spy:
    """Records MethodHooks.prepare's inputs and output and the advantages of every step."""

    def __init__(self, monkeypatch):
        self.steps: list[dict] = []
        prep, adv = MethodHooks.prepare, MethodHooks.advantages

        def prepare(hooks, batch, texts, examples):
            out = prep(hooks, batch, texts, examples)
            self.steps.append({"texts": list(texts), "examples": list(examples), "batch": out})
            return out

        def advantages(hooks, batch, step):
            a = adv(hooks, batch, step)
            self.steps[-1]["adv"] = a.clone()
            return a

        monkeypatch.setattr(MethodHooks, "prepare", prepare)
        monkeypatch.setattr(MethodHooks, "advantages", advantages)


def _grpo_by_hand(r: torch.Tensor, group: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i − mean_g)/(std_g + ε), unbiased std; constant group or group of one -> 0."""
    out = torch.zeros(len(r), dtype=torch.float64)
    for g in group.unique().tolist():
        idx = (group == g).nonzero().flatten().tolist()
        vals = [float(r[i]) for i in idx]
        if len(vals) < 2 or max(vals) == min(vals):
            continue
        mu = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / (len(vals) - 1))
        for i in idx:
            out[i] = (float(r[i]) - mu) / (sd + eps)
    return out


def _run(tmp_path, name, **kw):
    cfg = build_config(tiny_overrides(tmp_path, name=name, steps=2, eval_every=0, save_every=2, seed=3, **kw))
    train(cfg)
    return read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")


@pytest.mark.parametrize("kl", [False, True])
def test_loop_maxmin_with_reward_models_exact(tmp_path, monkeypatch, kl):
    """Each step: components = θ_u · f(y) of the decoded responses (features counted by hand here),
    minus β·Σ_t(log π_old − log π_ref) with kl_in_reward; F_u = their batch means (logged); the
    worst group by the z-scored means (reference statistics of the manifest); GRPO on its column."""
    theta = torch.tensor([[0.0, 1.0, -1.0, 0.5, 0.0, 0.0], [0.3, -1.0, 1.0, 0.0, 0.0, -0.5]], dtype=torch.float64)
    rm = _models(tmp_path, theta)
    spy = _Spy(monkeypatch)
    extra = dict(kl_coef=0.5, kl_in_reward=True) if kl else {}
    rows = _run(tmp_path, f"mm{int(kl)}", estimator="maxmin", reward_models=str(rm),
                estimator_kwargs={"normalize": "zscore"}, **extra)
    assert len(spy.steps) == 2
    for rec, row in zip(spy.steps, rows):
        b = rec["batch"]
        f = torch.tensor([_features_by_hand(t) for t in rec["texts"]], dtype=torch.float64)
        rc = (f @ theta.T)
        if kl:
            rc = rc - 0.5 * ((b.old_logprobs - b.ref_logprobs).double() * b.mask).sum(1, keepdim=True)
        assert torch.allclose(b.reward_components.double(), rc, atol=1e-5)
        F = rc.mean(0)
        z = [(float(F[0]) - 0.1) / (0.5 + 1e-6), (float(F[1]) + 0.2) / (2.0 + 1e-6)]
        u = 0 if z[0] <= z[1] else 1
        assert row["maxmin/worst_group"] == u
        assert row["maxmin/F_0"] == pytest.approx(float(F[0]), abs=1e-5)
        assert row["maxmin/F_1"] == pytest.approx(float(F[1]), abs=1e-5)
        assert [row["maxmin/Fz_0"], row["maxmin/Fz_1"]] == pytest.approx(z, abs=1e-4)
        want = _grpo_by_hand(rc[:, u], b.group)
        assert torch.allclose(rec["adv"][:, 0].double(), want, atol=1e-4)
        assert torch.equal(rec["adv"], rec["adv"][:, :1] * b.mask)  # one value per response, 0 off the mask


def test_loop_maxmin_reward_functions_exact(tmp_path, monkeypatch):
    """The reward_components path (K reward functions): column 0 is the run's verifier ('task'; here
    tiny_overrides' reward_fn, the digit fraction d/3), column 1 ``brevity`` = 1 − len/3; F_u, the
    worst group and the GRPO advantages recomputed by hand."""
    spy = _Spy(monkeypatch)
    rows = _run(tmp_path, "mmfn", estimator="maxmin", reward_components=["task", "test_maxmin_pipeline:brevity"])
    for rec, row in zip(spy.steps, rows):
        c0 = torch.tensor([sum(c.isdigit() for c in t) / 3.0 for t in rec["texts"]], dtype=torch.float64)
        c1 = torch.tensor([1.0 - len(t) / 3.0 for t in rec["texts"]], dtype=torch.float64)
        F = [float(c0.mean()), float(c1.mean())]
        u = 0 if F[0] <= F[1] else 1
        assert row["maxmin/worst_group"] == u
        assert [row["maxmin/F_0"], row["maxmin/F_1"]] == pytest.approx(F, abs=1e-6)
        want = _grpo_by_hand((c0, c1)[u], rec["batch"].group)
        assert torch.allclose(rec["adv"][:, 0].double(), want, atol=1e-4)


def brevity(example, completion: str) -> float:
    """A second reward function: shorter completions score higher."""
    return 1.0 - len(completion) / 3.0


def test_loop_expression_gets_components(tmp_path, monkeypatch):
    """``0.5*maxmin + 0.5*grpo``: the trainer fills reward_components because a term declares it;
    maxmin's half uses the worst group's column, grpo's half the task reward (rewards unchanged)."""
    theta = torch.tensor([[0.0, 1.0, -1.0, 0.5, 0.0, 0.0], [0.3, -1.0, 1.0, 0.0, 0.0, -0.5]], dtype=torch.float64)
    spy = _Spy(monkeypatch)
    rows = _run(tmp_path, "expr", estimator="0.5*maxmin + 0.5*grpo", reward_models=str(_models(tmp_path, theta)))
    for rec, row in zip(spy.steps, rows):
        b = rec["batch"]
        rc = torch.tensor([_features_by_hand(t) for t in rec["texts"]], dtype=torch.float64) @ theta.T
        u = int(rc.mean(0).argmin())
        assert row["maxmin/worst_group"] == u
        want = 0.5 * _grpo_by_hand(rc[:, u], b.group) + 0.5 * _grpo_by_hand(b.rewards, b.group)
        assert torch.allclose(rec["adv"][:, 0].double(), want, atol=1e-4)


def test_loop_critic_learns_the_chosen_groups_reward(tmp_path, monkeypatch):
    """``estimator_kwargs.base=gae credit=critic``: the critic's value targets are the returns of the
    worst-off group's reward (γ = λ = 1: the final reward at every token), not the task reward."""
    import grouprl.train.credit as credit

    theta = torch.tensor([[0.0, 1.0, -1.0, 0.5, 0.0, 0.0], [0.3, -1.0, 1.0, 0.0, 0.0, -0.5]], dtype=torch.float64)
    spy = _Spy(monkeypatch)
    targets = []
    orig = credit.value_loss

    def value_loss(v, old_v, returns, mask, **kw):
        targets.append((returns.detach().clone(), mask.clone()))
        return orig(v, old_v, returns, mask, **kw)

    monkeypatch.setattr(credit, "value_loss", value_loss)
    rows = _run(tmp_path, "critic", estimator="maxmin", reward_models=str(_models(tmp_path, theta)), credit="critic",
                estimator_kwargs={"base": "gae"})
    want = []
    for rec, row in zip(spy.steps, rows):
        rc = torch.tensor([_features_by_hand(t) for t in rec["texts"]], dtype=torch.float64) @ theta.T
        u = int(rc.mean(0).argmin())
        assert row["maxmin/worst_group"] == u
        m = rec["batch"].mask
        want.append(rc[:, u][:, None].expand(m.shape)[m.any(dim=1)][m[m.any(dim=1)]])
    # the critic's micro-batches (8 rows each) in order, all steps: returns on the value mask
    got = torch.cat([ret[m] for ret, m in targets]).double()
    assert got.shape == torch.cat(want).shape
    assert torch.allclose(got, torch.cat(want), atol=1e-5)

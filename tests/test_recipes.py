"""Recipes (grouprl.recipes): each expands to a valid TrainConfig, explicit fields win, unknown names
get close matches, and ``grouprl list`` / ``grouprl explain`` show every registered kind."""

import re

import pytest
import yaml
from typer.testing import CliRunner

from grouprl.cli import app
from grouprl.envs import ENVS
from grouprl.recipes import RECIPES, expand_method
from grouprl.sampling import SAMPLERS
from grouprl.tasks import TASKS
from grouprl.train.config import (
    ConfigError,
    build_config,
    load_config,
    parse_overrides,
    read_config_file,
)
from grouprl.train.credit import CREDITS

runner = CliRunner()
REQUIRED = ("grpo", "dr_grpo", "dapo", "ngrpo", "confucius3", "srpo", "gigpo")


def test_required_recipes_are_registered_with_paper_and_change():
    for name in REQUIRED:
        r = RECIPES[name]
        assert re.search(r"arXiv:\d{4}\.\d{5} §", r.paper), (name, r.paper)
        assert r.changes.endswith(".") and r.fields, name


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_expands_and_validates(name):
    extra = {"env": "gridworld"} if name == "gigpo" else {}
    cfg = build_config({"method": name, **extra})
    assert cfg.method == name
    dumped = cfg.model_dump()
    for key, value in RECIPES[name].fields.items():
        assert dumped[key] == value, (name, key)


def test_dapo_recipe_values_from_the_paper():
    cfg = build_config({"method": "dapo"})
    # arXiv:2503.14476 §3.1: ε_low 0.2, ε_high 0.28; dynamic sampling; token-level loss; no KL
    assert cfg.loss_kwargs == {"eps_low": 0.2, "eps_high": 0.28}
    assert (cfg.sampler, cfg.agg, cfg.kl_coef) == ("dapo_dynamic", "token-mean", 0.0)
    assert cfg.overlong_buffer == 1


def test_explicit_fields_override_the_recipe_one_by_one():
    cfg = load_config(None, parse_overrides(["method=dapo", "loss_kwargs.eps_high=0.3", "steps=50"]))
    assert cfg.loss_kwargs == {"eps_low": 0.2, "eps_high": 0.3}  # eps_low kept from the recipe
    assert cfg.steps == 50 and cfg.sampler == "dapo_dynamic"
    cfg = build_config({"method": "ngrpo", "sampler": "uniform"})  # DAPO's sampler_kwargs go with its sampler
    assert cfg.sampler == "uniform" and cfg.sampler_kwargs == {} and cfg.estimator == "ngrpo"


def test_no_method_changes_nothing():
    assert expand_method({"steps": 3}) == {"steps": 3}
    assert build_config({}).method is None


def test_unknown_recipe_gets_close_matches():
    with pytest.raises(ConfigError, match=r"method: unknown recipe 'dapoo': did you mean 'dapo'"):
        build_config({"method": "dapoo"})


def test_config_yaml_round_trip_keeps_method_and_expanded_fields(tmp_path):
    cfg = load_config(None, parse_overrides(["method=confucius3", "ter_kwargs.coef=0.01"]))
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg.model_dump()))
    saved = yaml.safe_load(p.read_text())
    assert saved["method"] == "confucius3" and saved["estimator"] == "pshw" and saved["ter"] is True
    again = load_config(p)  # re-expanding a saved config is a no-op: the saved fields win
    assert again == cfg and again.ter_kwargs == {"target": 0.55, "coef": 0.01}


def test_list_shows_every_kind():
    res = runner.invoke(app, ["list", "--markdown"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for title in ("Advantage estimators", "Policy losses", "Recipes", "Samplers", "Credit hooks", "Tasks",
                  "Environments", "Shipped warm starts"):
        assert title in res.output
    for reg in (RECIPES, SAMPLERS, CREDITS, TASKS, ENVS):
        for name in reg:
            assert f"| {name} |" in res.output, name
    res = runner.invoke(app, ["list"], terminal_width=250)
    assert res.exit_code == 0 and "Recipes" in res.output and "Environments" in res.output


@pytest.mark.parametrize(
    "name, kind, expect",
    [
        ("confucius3", "recipe", "estimator: 'pshw'"),
        ("recent_sample_recovery", "sampler", "arXiv:2506.18330"),
        ("dapo_dynamic", "sampler", "max_rounds=16"),
        ("credit:spo_chain", "credit hook", "keywords:"),
        ("add3r", "task", "reversed"),
        ("gridworld", "environment", "keywords:"),
    ],
)
def test_explain_each_kind(name, kind, expect):
    res = runner.invoke(app, ["explain", name], terminal_width=250)
    assert res.exit_code == 0, res.output
    assert f"{name.split(':')[-1]} — {kind}" in res.output and expect in res.output


def test_a_name_in_two_kinds_points_to_the_other():
    res = runner.invoke(app, ["explain", "dapo"], terminal_width=250)
    assert "dapo — advantage estimator" in res.output and "dapo — recipe" not in res.output
    assert "'dapo' is also a recipe: grouprl explain recipe:dapo" in res.output
    res = runner.invoke(app, ["explain", "recipe:dapo"], terminal_width=250)
    assert res.exit_code == 0 and "dapo — recipe" in res.output
    assert "sampler: 'dapo_dynamic'" in res.output  # the expanded config
    res = runner.invoke(app, ["explain", "sampler:dapo"], terminal_width=250)
    assert res.exit_code == 2 and "unknown method 'dapo'" in res.output


def test_loss_presets_are_aliases_of_ppo_clip():
    import torch

    from grouprl.losses import LOSSES, policy_loss
    from grouprl.losses.registry import register_preset

    assert LOSSES["dapo_clip"].defaults == {**LOSSES["ppo_clip"].defaults, "eps_high": 0.28}
    assert LOSSES["ngrpo_clip"].defaults == {**LOSSES["ppo_clip"].defaults, "eps_low": 0.16, "eps_high": 0.24}
    g = torch.Generator().manual_seed(0)
    lp, old, adv = (torch.randn(3, 5, generator=g) for _ in range(3))
    mask = torch.ones(3, 5, dtype=torch.bool)
    a, _ = policy_loss("dapo_clip", lp, old, adv, mask, eps_high=0.3)  # a keyword still overrides the preset
    b, _ = policy_loss("ppo_clip", lp, old, adv, mask, eps_low=0.2, eps_high=0.3)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"'ppo_clip' has no keyword\(s\) \['eps_hi'\]"):
        register_preset("bad_clip", "ppo_clip", paper="", doc="", eps_hi=0.3)


TASK_RECIPES = sorted(n for n in RECIPES if n != "gigpo")


@pytest.mark.parametrize("name", TASK_RECIPES)
def test_each_task_recipe_trains_two_steps(tmp_path, name):
    import math

    from test_train import tiny_overrides

    from grouprl.train import train
    from grouprl.train.logging import read_jsonl

    cfg = build_config(tiny_overrides(tmp_path, name=name, method=name, steps=2, eval_every=0, save_every=2))
    train(cfg)
    rows = read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
    saved = read_config_file(tmp_path / "runs" / name / "config.yaml")  # nested by section, read flat
    assert saved["method"] == name and saved["estimator"] == RECIPES[name].fields["estimator"]


def test_gigpo_recipe_trains_an_agent_two_steps(tmp_path):
    from test_agent_train import BASE

    from grouprl.train.logging import read_jsonl
    from grouprl.train import train

    train(build_config({**BASE, "out_dir": str(tmp_path), "name": "g", "method": "gigpo"}))
    assert [r["step"] for r in read_jsonl(tmp_path / "g" / "metrics.jsonl")] == [1, 2]
    assert "estimator: gigpo" in (tmp_path / "g" / "config.yaml").read_text()

"""`grouprl list` and `grouprl explain`."""

import pytest
from typer.testing import CliRunner

from grouprl.advantages import ESTIMATORS
from grouprl.cli import app
from grouprl.losses import LOSSES

runner = CliRunner()


def test_list_shows_every_estimator_and_loss():
    res = runner.invoke(app, ["list"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for name in list(ESTIMATORS) + list(LOSSES):
        if not name.startswith("_"):
            assert name in res.output


def test_explain_grpo_computes_the_worked_example():
    res = runner.invoke(app, ["explain", "grpo"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "arXiv:2402.03300" in res.output
    assert "+0.8660, -0.8660, -0.8660, +0.8660" in res.output


def test_explain_loss_computes_its_example():
    res = runner.invoke(app, ["explain", "ppo_clip"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "loss = " in res.output and "eps_low" in res.output


@pytest.mark.parametrize("name", sorted(n for n in ESTIMATORS if not n.startswith("_")))
def test_explain_every_estimator_runs(name):
    res = runner.invoke(app, ["explain", name], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert ESTIMATORS[name].example is None or "advantage" in res.output


def test_explain_unknown_name_suggests():
    res = runner.invoke(app, ["explain", "ngrpoo"], terminal_width=200)
    assert res.exit_code == 2
    assert "unknown method 'ngrpoo'" in res.output


def test_list_markdown_has_one_row_per_method():
    res = runner.invoke(app, ["list", "--markdown"])
    assert res.exit_code == 0, res.output
    names = [n for n in list(ESTIMATORS) + list(LOSSES) if not n.startswith("_")]
    methods_part = res.output.split("Shipped warm starts")[0]  # the estimator and loss tables
    rows = [line for line in methods_part.splitlines() if line.startswith("| ") and not line.startswith("| name")]
    assert sorted(r.split(" | ")[0][2:] for r in rows) == sorted(names)


def test_explain_shows_a_samplers_declared_inputs_and_state():
    from grouprl.sampling import SAMPLERS

    r = runner.invoke(app, ["explain", "sampler:vade"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "reads: " + ", ".join(SAMPLERS["vade"].needs) in r.output
    assert "carries from step to step (checkpointed): " + ", ".join(SAMPLERS["vade"].carries) in r.output

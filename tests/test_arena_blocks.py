"""The arena's presets beside ``evidence`` (docs/arena.md "Blocks"): each loads and validates, one
2-step cell per method of each block trains through the arena's own cell runner (tiny model), and
``grouprl arena --dry-run`` prints the plan with the estimate computed from the measured CPU seconds."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from grouprl.arena import SpecError, load_spec
from grouprl.arena.plan import plan
from grouprl.arena.runner import run_cell
from grouprl.arena.spec import PRESET_CPU_S, PRESETS, warm_key
from grouprl.cli import app
from grouprl.rewards.digits import low_digit_share

BLOCKS = {"quick": 9, "token_credit": 120, "maxmin": 40, "agents": 60, "selfplay": 60}

# A 2-step version of a cell: the tiny model, a few prompts/episodes, an evaluation at the start and the end.
TWO_STEPS = {"model": "tiny", "steps": 2, "eval_every": 0, "eval_size": 4, "save_every": 2, "prompts_per_step": 2}
TWO_STEPS_TASK = {**TWO_STEPS, "sft_steps": 0}                     # RL from the untrained tiny model
TWO_STEPS_ENV = {**TWO_STEPS, "sft_steps": 2, "sft_batch_size": 4, "max_turns": 3, "group_size": 2}  # a 2-step expert SFT


def test_presets_load_and_every_cell_validates():
    for name, n in BLOCKS.items():
        spec = load_spec(preset=name)
        cells = spec.cells()  # each one a validated TrainConfig
        assert len(cells) == n == len(spec.methods) * len(spec.tasks) * len(spec.seeds), name
        assert spec.baseline == "grpo" and spec.metric == "acc"
        assert len(spec.seeds) >= (3 if name == "quick" else 10)
    assert set(load_spec(preset="agents").methods) == {"grpo", "gigpo", "salt"}
    assert {"mars", "advevo"} <= set(load_spec(preset="selfplay").methods)
    assert {"hapo", "spo_chain", "spo_tree", "tppo", "egae"} <= set(load_spec(preset="token_credit").methods)
    with pytest.raises(SpecError, match="'full' was removed; use evidence"):
        load_spec(preset="full")


def test_blocks_share_the_evidence_regime():
    """The add3r blocks start from the shipped warm start, and their grpo cells are evidence's grpo cells."""
    evidence = {c.seed: c.config for c in load_spec(preset="evidence").cells() if c.method == "grpo"}
    for name in ("token_credit", "maxmin", "quick"):
        cells = load_spec(preset=name).cells()
        assert all(warm_key(c.config) is None for c in cells), name  # no SFT: the shipped add3r-1M
        if name != "quick":
            assert {c.seed: c.config for c in cells if c.method == "grpo" and c.seed in evidence} == evidence
    # env blocks: one expert SFT per seed, shared by the methods, different across seeds and envs
    for name in ("agents", "selfplay"):
        cells = load_spec(preset=name).cells()
        keys = {(c.method, c.seed): warm_key(c.config) for c in cells}
        assert None not in keys.values()
        assert len(set(keys.values())) == len(load_spec(preset=name).seeds)
        assert keys[("grpo", 0)] == keys[(cells[-1].method, 0)] != keys[("grpo", 1)]
    assert warm_key(load_spec(preset="agents").cells()[0].config) != warm_key(load_spec(preset="selfplay").cells()[0].config)


def _one_cell_per_method(name: str) -> list:
    spec = load_spec(preset=name)
    return [c for c in spec.cells() if c.seed == spec.seeds[0]]


@pytest.mark.parametrize("name", list(BLOCKS))
def test_two_step_cell_of_every_method_trains(tmp_path, name):
    for c in _one_cell_per_method(name):
        over = TWO_STEPS_ENV if c.config.get("env") else TWO_STEPS_TASK
        res = run_cell({**c.config, **over}, str(tmp_path / "cells" / c.cell_id), str(tmp_path / "warm"))
        assert res["status"] == "done", (c.cell_id, res["error"])
        assert [r["step"] for r in res["metrics"]] == [1, 2], c.cell_id
        assert [e["step"] for e in res["evals"]] == [0, 2] and all("acc" in e for e in res["evals"]), c.cell_id
        if c.method == "maxmin":  # both reward components were read
            assert "maxmin/worst_group" in res["metrics"][0]
    if name in ("agents", "selfplay"):  # the shared warm start is the env's expert SFT, built once for the seed
        (built,) = [p for p in (tmp_path / "warm").iterdir() if p.is_dir()]
        assert built.name.startswith(next(iter(load_spec(preset=name).tasks))) and (built / "sft" / "config.json").is_file()


def test_low_digit_share():
    assert low_digit_share(None, "0123") == 1.0
    assert low_digit_share(None, "15") == 0.5
    assert low_digit_share(None, "59x") == 0.0
    assert low_digit_share(None, "") == 0.0


# ---------------------------------------------------------------------------- --dry-run
def _expected_cpu(name: str) -> float:
    spec = load_spec(preset=name)
    m = PRESET_CPU_S[name]
    cells = sum(m["cells"][c.method] for c in spec.cells())
    return cells + len({warm_key(c.config) for c in spec.cells()} - {None}) * (m["warm_start"] or 0.0)


@pytest.mark.parametrize("name", [n for n in PRESET_CPU_S if set(PRESET_CPU_S[n]["cells"]) == set(PRESETS[n]["methods"])])
def test_dry_run_prints_the_plan(tmp_path, name):
    spec = load_spec(preset=name)
    r = CliRunner().invoke(app, ["arena", "--preset", name, "--dry-run", "--workers", "2", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert f"= {len(spec.cells())} cells" in out
    for method, over in spec.methods.items():
        assert f"{method}: " + (", ".join(f"{k}={v}" for k, v in over.items()) or "(the trainer's defaults)") in out
    p = plan(spec, workers=2)
    assert p.cpu_s == pytest.approx(_expected_cpu(name)) and not p.unmeasured_cells and not p.unmeasured_warm
    assert f"estimated time: {p.cpu_s:,.0f} CPU s" in out and f"/ {p.parallel} in parallel" in out
    if any(warm_key(c.config) for c in spec.cells()):
        assert f"SFT, built once per key and shared by the cells with that key: {len(spec.seeds)} to build" in out
    else:
        assert f"shipped add3r-1M: {len(spec.cells())} cells" in out
    assert not (tmp_path / "o").exists()  # nothing ran, nothing written


def test_dry_run_names_unmeasured_cells_and_refuses_resume(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("methods: {grpo: {}, rloo_hi: {estimator: rloo, lr: 0.001}}\nseeds: [0]\n")
    r = CliRunner().invoke(app, ["arena", str(f), "--preset", "token_credit", "--dry-run"])
    out = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert "= 2 cells" in out and "estimated time: unknown: 1 of 2 cells" in out and "rloo_hi__add3r__s0" in out
    r = CliRunner().invoke(app, ["arena", "--resume", str(tmp_path), "--dry-run"])
    assert r.exit_code == 2 and "--dry-run plans a new sweep" in " ".join(r.output.split())

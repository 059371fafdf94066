"""TrainConfig sections: nested YAML, flat and dotted overrides, old flat files, resume hash."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from grouprl.cli import app
from grouprl.train.config import (
    RESUMABLE_FIELDS,
    SECTIONS,
    ConfigError,
    TrainConfig,
    build_config,
    config_yaml,
    flatten_sections,
    load_config,
    nest_sections,
    parse_overrides,
)


def _old_hash(flat: dict) -> str:
    """compat_hash as computed before sections existed: sha256 of the flat field dict minus RESUMABLE_FIELDS."""
    d = {k: v for k, v in flat.items() if k not in RESUMABLE_FIELDS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Pinned on main at 47b7138, before sections: a checkpoint stores this hash and --resume compares it.
# (A new field with a default changes every hash, so runs written before it no longer resume.)
PINNED = [({}, "0889f6f8db88aeaf"), ({"method": "dapo"}, "1ec45768521d4148"), ({"env": "gridworld"}, "32152f4fceda2f82")]


@pytest.mark.parametrize("values,expected", PINNED)
def test_compat_hash_is_unchanged_for_the_same_values(values, expected):
    cfg = build_config(values)
    assert cfg.compat_hash() == expected
    assert _old_hash(cfg.model_dump()) == expected


# ----------------------------------------------------------------------------------------------- sections
DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def test_every_field_is_in_exactly_one_section():
    listed = [f for sec in SECTIONS.values() for f in sec.fields]
    assert sorted(listed) == sorted(TrainConfig.model_fields)  # each once, none missing, none stale
    assert list(SECTIONS) == ["model", "task", "rollout", "method", "optim", "eval", "run"]


def sections_table() -> str:
    rows = [f"| `{name}` | {sec.doc} | {', '.join(f'`{f}`' for f in sec.fields)} |" for name, sec in SECTIONS.items()]
    return "\n".join(["| section | what it holds | fields |", "|---|---|---|", *rows])


def test_docs_table_of_sections_matches_the_model():
    assert sections_table() in DOCS.read_text(), "docs/training.md: replace the sections table by\n" + sections_table()


def test_nested_yaml_round_trip(tmp_path):
    cfg = load_config(None, parse_overrides(["method=dapo", "lr=3e-5", "task_kwargs.train_size=500", "name=x"]))
    p = tmp_path / "config.yaml"
    p.write_text(config_yaml(cfg))
    saved = yaml.safe_load(p.read_text())
    assert list(saved) == list(SECTIONS)  # nested, every section, in order
    assert saved["optim"]["lr"] == 3e-5 and saved["method"]["method"] == "dapo" and saved["model"]["model"] == "1M"
    assert saved["task"]["task_kwargs"] == {"train_size": 500} and saved["run"]["name"] == "x"
    assert sum(len(v) for v in saved.values()) == len(TrainConfig.model_fields)
    again = load_config(p)
    assert again == cfg and again.compat_hash() == cfg.compat_hash()
    assert flatten_sections(nest_sections(cfg.model_dump())) == cfg.model_dump()


def test_flat_and_dotted_overrides_set_the_same_fields():
    flat = parse_overrides(["lr=1e-5", "estimator=dapo", "--group-size", "4", "estimator_kwargs.eps=1e-5"])
    dotted = parse_overrides(["optim.lr=1e-5", "method.estimator=dapo", "--rollout.group_size", "4",
                              "method.estimator_kwargs.eps=1e-5"])
    # (1e-5 stays a string, as YAML 1.1 reads it; pydantic coerces it)
    assert flat == dotted == {"lr": "1e-5", "estimator": "dapo", "group_size": 4, "estimator_kwargs": {"eps": "1e-5"}}
    mixed = parse_overrides(["optim.lr=1e-5", "estimator=dapo", "model.model=1M", "task=add3r"])
    assert mixed == {"lr": "1e-5", "estimator": "dapo", "model": "1M", "task": "add3r"}
    # a dict field set both ways merges key by key
    assert parse_overrides(["estimator_kwargs.eps=1e-5", "method.estimator_kwargs.ddof=0"]) == \
        {"estimator_kwargs": {"eps": "1e-5", "ddof": 0}}
    assert load_config(None, dotted).lr == 1e-5


def test_override_errors_name_the_section():
    with pytest.raises(ConfigError, match=r"lr is set twice \(as lr= and optim.lr=\)"):
        parse_overrides(["lr=1e-5", "optim.lr=2e-5"])
    with pytest.raises(ConfigError, match=r"estimator belongs to section method, not optim.*method.estimator="):
        parse_overrides(["optim.estimator=dapo"])
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr' in section optim \(did you mean lr"):
        parse_overrides(["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim'. optim is a section: .*lr, lr_schedule"):
        load_config(None, parse_overrides(["optim=1"]))


def test_old_flat_file_loads(tmp_path):
    cfg = load_config(None, parse_overrides(["method=ngrpo", "steps=7", "eval_every=0"]))
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))  # what config.yaml was before sections
    assert load_config(p) == cfg
    assert load_config(p, parse_overrides(["optim.steps=9"])).steps == 9  # overrides over a flat file
    p.write_text("lr: 3.0e-5\nmodel: 1M\ntask: add3r\nmethod: null\nestimator_kwargs: {eps: 1.0e-5}\n")  # a hand-written one
    assert load_config(p).lr == 3e-5 and load_config(p).estimator_kwargs == {"eps": 1e-5}


def test_nested_file_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method:\n  method: dapo\n  loss_kwargs: {eps_high: 0.3}\noptim: {lr: 3.0e-5}\nrun: {seed: 2}\n")
    cfg = load_config(p, parse_overrides(["lr=1e-5", "loss_kwargs.eps_low=0.1"]))
    assert (cfg.lr, cfg.seed, cfg.sampler) == (1e-5, 2, "dapo_dynamic")
    assert cfg.loss_kwargs == {"eps_low": 0.1, "eps_high": 0.3}


def test_mixed_or_misplaced_file_is_refused_with_how_to_convert(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim: {lr: 1.0e-5}\nestimator: dapo\nsed: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "c.yaml' mixes sections (optim) with top-level fields (estimator, sed)" in msg
    assert "estimator -> method" in msg and "sed is neither a section nor a field (did you mean seed" in msg
    assert "either flat" in msg
    p.write_text("optim: {lr: 1.0e-5}\noptimisation: {steps: 3}\n")
    with pytest.raises(ConfigError, match=r"optimisation is neither a section nor a field \(did you mean optim"):
        load_config(p)
    p.write_text("optim: {lr: 1.0e-5, estimator: dapo}\n")
    with pytest.raises(ConfigError, match=r"c.yaml': estimator belongs to section method, not optim"):
        load_config(p)
    p.write_text("optim: {lr: 1.0e-5}\nrun:\n")
    with pytest.raises(ConfigError, match=r"section run holds no mapping"):
        load_config(p)


def test_fields_named_like_their_section_read_both_ways():
    # model/task/method as strings are the fields; as mappings, the sections
    assert build_config({"model": "1M", "task": "add3r", "method": "dapo"}) == \
        build_config({"model": {"model": "1M"}, "task": {"task": "add3r"}, "method": {"method": "dapo"}})


@pytest.mark.parametrize("values,expected", PINNED)
def test_compat_hash_of_a_nested_config_is_the_flat_one(values, expected):
    assert build_config(nest_sections(values)).compat_hash() == expected


def test_help_is_grouped_by_section():
    res = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    out = res.output
    starts = [out.index(f"─ {name} ─") for name in SECTIONS]
    assert starts == sorted(starts)  # one panel per section, in SECTIONS order
    for name, sec in SECTIONS.items():
        i = list(SECTIONS).index(name)
        body = out[starts[i]: starts[i + 1] if i + 1 < len(starts) else len(out)]
        assert sec.doc.split(":")[0] in body
        for field in sec.fields:
            assert re.search(rf"│\s+{field}\s", body), f"{field} missing from the {name} panel"
    assert "optim.lr=1e-5" in out


def test_arena_spec_accepts_nested_parts(tmp_path):
    from grouprl.arena.spec import SpecError, load_spec, spec_from_dict

    flat = spec_from_dict({"base": {"steps": 3, "lr": 5e-5}, "methods": {"g": {"estimator": "grpo"}},
                           "tasks": ["add3r"], "seeds": [0]})
    nested = spec_from_dict({"base": {"optim": {"steps": 3, "lr": 5e-5}}, "methods": {"g": {"method": {"estimator": "grpo"}}},
                             "tasks": ["add3r"], "seeds": [0]})
    assert [c.config for c in flat.cells()] == [c.config for c in nested.cells()]
    p = tmp_path / "spec.yaml"  # a nested file over a flat preset
    p.write_text("base:\n  optim: {steps: 5}\n")
    spec = load_spec(p, preset="quick")
    assert spec.base["steps"] == 5 and spec.base["eval_size"] == 200  # the preset's other base keys stay
    with pytest.raises(SpecError, match=r"base: seed are set by the arena"):
        spec_from_dict({"base": {"run": {"seed": 1}}, "methods": ["g"], "tasks": ["add3r"], "seeds": [0]})
    with pytest.raises(SpecError, match=r"methods.g mixes sections"):
        spec_from_dict({"methods": {"g": {"optim": {"lr": 1.0}, "estimator": "grpo"}}, "tasks": ["add3r"], "seeds": [0]})


def test_warm_start_note_reads_a_nested_config(tmp_path):
    from grouprl.train.plot import warm_start_note

    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "sft_log.jsonl").write_text('{"step": 1, "loss": 1.0, "val_acc": 0.1}\n')
    (tmp_path / "config.yaml").write_text(config_yaml(TrainConfig(sft_target_acc=0.4)))
    assert "missed its SFT target" in warm_start_note(tmp_path)


def test_a_run_dir_with_an_old_flat_config_yaml_resumes(tmp_path):
    from test_train import tiny_overrides

    from grouprl.train import resume_config, train
    from grouprl.train.logging import read_jsonl

    cfg = build_config(tiny_overrides(tmp_path, name="r", steps=2, save_every=2, eval_every=0))
    run = Path(train(cfg)["run_dir"])
    assert list(yaml.safe_load((run / "config.yaml").read_text())) == list(SECTIONS)  # written nested
    # the run dir as a version before sections left it: config.yaml flat, the checkpoint's hash unchanged
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    again = resume_config(run, parse_overrides(["optim.steps=3"]))
    assert again.steps == 3 and again.compat_hash() == cfg.compat_hash()
    train(again, resume=run)
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_plain_help_without_rich_is_grouped_too():
    import click

    from grouprl.cli.cmd_train import _SectionedHelp

    cmd = _SectionedHelp(name="train", callback=lambda: None, help="doc", rich_markup_mode=None)
    text = cmd.get_help(click.Context(cmd))
    starts = [text.index(f"\n{name}:\n") for name in SECTIONS]
    assert starts == sorted(starts) and "\n  lr=0.0001\n" in text[starts[4]:starts[5]]

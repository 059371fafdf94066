from __future__ import annotations

import sys
import types

import pytest
from conftest import require

from grouprl.core import UnknownName
from grouprl.tasks import TASKS, Arithmetic, Example, Mixed, Task, first_line, get_task


def prompts(examples):
    return [e.prompt for e in examples]


@pytest.mark.parametrize("name", ["add1", "add2", "add3", "sub1", "sub2", "sub3", "mul1", "mul2", "mul3"])
def test_arithmetic_answers_are_right_and_splits_disjoint(name):
    task = get_task(name, seed=0)
    assert task.name == name and task.data_groups == [name]
    train, held = prompts(task.train_pool), prompts(task.eval_examples)
    assert len(set(train)) == len(train) and len(set(held)) == len(held)
    assert not set(train) & set(held)
    digits = int(name[-1])
    for e in task.train_pool[:200] + task.eval_examples:
        a, b = e.meta["a"], e.meta["b"]
        assert e.answer == str(eval(e.prompt[:-1]))
        assert e.prompt == f"{a}{'+-*'['asm'.index(name[0])]}{b}="
        assert max(a, b) < 10**digits and len(str(max(a, b))) == digits
        assert e.data_group == name and task.score(e, e.answer) == 1.0
        if name.startswith("sub"):
            assert a >= b


def test_split_sizes():
    assert (len(get_task("add1").train_pool), len(get_task("add1").eval_examples)) == (80, 20)  # all 100 pairs
    t = get_task("add3", train_size=500, eval_size=300)
    assert (len(t.train_pool), len(t.eval_examples)) == (500, 300)
    assert len(get_task("add2").eval_examples) == 1000 and len(get_task("add2").train_pool) == 9900 - 1000
    assert len(get_task("add3r").eval_examples) == 1000  # the default: 1,000 held-out prompts


def test_seed_determinism_and_fixed_eval_split():
    a, b, c = get_task("add2", seed=1), get_task("add2", seed=1), get_task("add2", seed=2)
    assert prompts(a.train_pool) == prompts(b.train_pool)
    assert prompts(a.train_pool) != prompts(c.train_pool)
    assert sorted(prompts(a.train_pool)) == sorted(prompts(c.train_pool))  # the whole remaining space
    # the eval split does not depend on the training seed or pool size
    assert prompts(a.eval_examples) == prompts(c.eval_examples) == prompts(get_task("add2", train_size=50).eval_examples)
    big1, big2 = get_task("mul3", seed=1, train_size=300), get_task("mul3", seed=2, train_size=300)
    assert prompts(big1.eval_examples) == prompts(big2.eval_examples)
    assert prompts(big1.train_pool) != prompts(big2.train_pool)
    assert not set(prompts(big2.train_pool)) & set(prompts(big1.eval_examples))
    assert prompts(get_task("add2", split_seed=5).eval_examples) != prompts(a.eval_examples)


def test_digit_levels_are_disjoint():
    seen = [set(prompts(get_task(f"add{d}").train_pool + get_task(f"add{d}").eval_examples)) for d in (1, 2, 3)]
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2])


def test_score_right_wrong_garbled():
    task = get_task("add2")
    e = Example("23+45=", "68", "add2")
    assert task.score(e, "68") == 1.0
    assert task.score(e, " 68 \nwhatever follows") == 1.0
    assert task.score(e, "68<eos><pad>") == 1.0
    assert task.score(e, "69") == 0.0
    assert task.score(e, "6 8") == 0.0
    assert task.score(e, "068") == 0.0
    assert task.score(e, "\n68") == 0.0  # the answer must be on the first line
    assert task.score(e, "") == 0.0
    assert task.score(e, "68+1") == 0.0
    assert task.score(e, "#%&\x00~~") == 0.0
    assert task.reference(e) == "68"
    assert first_line("  12 \n 13") == "12"
    with pytest.raises(TypeError, match="decode"):
        task.score(e, [6, 8])
    assert task.score_many([e, e], ["68", "1"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="one completion per example"):
        task.score_many([e], [])


def test_mixed_task_groups_and_dispatch():
    t = get_task("mixed", seed=0)
    assert t.name == "mixed" and t.data_groups == ["add1", "add2", "sub2", "mul1"]
    assert {e.data_group for e in t.train_pool} == set(t.data_groups)
    assert {e.data_group for e in t.eval_examples} == set(t.data_groups)
    assert not set(prompts(t.train_pool)) & set(prompts(t.eval_examples))
    n_parts = sum(len(get_task(n).train_pool) for n in t.data_groups)
    assert len(t.train_pool) == n_parts
    assert prompts(t.train_pool) == prompts(get_task("mixed", seed=0).train_pool)
    assert prompts(t.train_pool) != prompts(get_task("mixed", seed=1).train_pool)
    for e in t.eval_examples[::37]:
        assert t.score(e, e.answer) == 1.0 and t.score(e, e.answer + "1") == 0.0
    with pytest.raises(ValueError, match="data_group"):
        t.score(Example("1+1=", "2", "add9"), "2")
    m = get_task("mix: add2 , sub2", train_size=100)
    assert m.name == "mix:add2,sub2" and m.data_groups == ["add2", "sub2"] and len(m.train_pool) == 200
    assert isinstance(m, Mixed) and m.trusted
    with pytest.raises(ValueError, match="distinct"):
        get_task("mix:add2,add2")
    with pytest.raises(ValueError, match="empty task name"):
        get_task("mix:add2,")


def test_get_task_unknown_name_suggests():
    with pytest.raises(UnknownName, match="did you mean 'add2'"):
        get_task("ad2")
    with pytest.raises(ValueError, match="did you mean 'mul1'"):
        get_task("mix:add1,mull1")
    assert "add2" in TASKS and "mixed" in TASKS
    t = get_task("add1")
    assert get_task(t) is t
    with pytest.raises(TypeError):
        get_task(3)
    with pytest.raises(ValueError, match="digits"):
        Arithmetic("add", 0)
    with pytest.raises(ValueError, match="op="):
        Arithmetic("div", 1)


def test_max_answer_chars():
    assert get_task("add1").max_answer_chars == 2
    assert get_task("mul3", train_size=100).max_answer_chars == 6


# -- reasoning-gym adapter, against a fake module (fast, and works without the extra) -----------------

class _FakeDataset:
    def __init__(self, seed, size):
        self.items = [
            {"question": f"What is {seed % 2 * 10 + i} plus 1?", "answer": str(seed % 2 * 10 + i + 1), "metadata": {"i": i}}
            for i in range(size)
        ]

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return len(self.items)

    def score_answer(self, answer, entry):
        if answer is None:
            return 0.0
        return 1.0 if answer == entry["answer"] else (0.5 if answer.strip(".") == entry["answer"] else 0.0)


@pytest.fixture
def fake_rg(monkeypatch):
    mod = types.ModuleType("reasoning_gym")

    def create_dataset(name, seed=0, size=10, **cfg):
        if name != "plus_one":
            raise ValueError(f"Dataset '{name}' not registered")
        return _FakeDataset(seed, size)

    mod.create_dataset = create_dataset
    mod.factory = types.SimpleNamespace(DATASETS={"plus_one": None, "leg_counting": None})
    monkeypatch.setitem(sys.modules, "reasoning_gym", mod)
    return mod


def test_reasoning_gym_adapter(fake_rg):
    t = get_task("rg:plus_one", seed=0, size=30, eval_size=5)
    assert t.name == "rg:plus_one" and t.data_groups == ["plus_one"] and not t.trusted
    assert len(t.eval_examples) == 5
    # the fake's eval questions (odd split seed 10_000_019: numbers 10..14) drop out of the pool
    assert not set(prompts(t.train_pool)) & set(prompts(t.eval_examples))
    assert prompts(t.eval_examples) == [f"What is {n} plus 1?" for n in range(10, 15)]
    assert len(t.train_pool) == 30 - 5
    e = t.train_pool[0]
    assert e.prompt == "What is 0 plus 1?" and e.answer == "1" and e.data_group == "plus_one"
    assert t.score(e, "1") == 1.0 and t.score(e, " 1 <eos>") == 1.0
    assert t.score(e, "1.") == 0.5 and t.score(e, "2") == 0.0
    assert prompts(get_task("rg:plus_one", seed=0, size=30, eval_size=5).train_pool) == prompts(t.train_pool)
    with pytest.raises(ValueError, match="did you mean 'plus_one'"):
        get_task("rg:plus_onee")
    with pytest.raises(ValueError, match="dataset name"):
        get_task("rg:")
    line = get_task("rg:plus_one", size=3, eval_size=1, first_line_only=True, prompt_suffix="\nA:")
    assert line.train_pool[0].prompt.endswith("\nA:") and line.score(line.train_pool[0], "1\nmore") == 1.0


def test_reasoning_gym_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'grouprl\[gym\]'"):
        get_task("rg:leg_counting")


def test_reasoning_gym_real_if_installed():
    require("reasoning_gym")
    t = get_task("rg:leg_counting", seed=0, size=20, eval_size=5)
    assert len(t.eval_examples) == 5 and 0 < len(t.train_pool) <= 20
    e = t.eval_examples[0]
    assert t.score(e, e.answer) == 1.0 and t.score(e, "no idea") == 0.0
    from grouprl.tasks import RewardGuard

    with RewardGuard.for_task(t, timeout_s=5.0) as guard:  # untrusted: scored in the worker
        assert not guard.trusted
        rewards, failed = guard.score_batch([e, e, t.train_pool[0]], [e.answer, "7", t.train_pool[0].answer])
    assert rewards.tolist() == [1.0, 0.0, 1.0] and not failed.any()


def test_example_fields_are_checked():
    assert Example("1+1=", "2").data_group == "default" and Example("1+1=", "2").meta == {}
    assert Example("a", "b").meta is not Example("a", "b").meta
    with pytest.raises(ValueError, match="Example.answer must be a str"):
        Example("1+1=", 2)


def test_custom_task_subclass():
    class Echo(Task):
        name = "echo"

        def __init__(self):
            self.train_pool = [Example("say a:", "a", "echo")]
            self.eval_examples = [Example("say b:", "b", "echo")]
            self.data_groups = ["echo"]

    t = Echo()
    assert t.score(t.train_pool[0], "a\n") == 1.0 and t.max_answer_chars == 1
    assert "Echo(name='echo'" in repr(t)


@pytest.mark.parametrize("name", ["add2r", "sub3r", "mul2r"])
def test_reversed_tasks_write_the_answer_least_significant_digit_first(name):
    task, plain = get_task(name, seed=3), get_task(name[:-1], seed=3)
    assert task.name == name and task.data_groups == [name]
    # same prompts and split as the plain task; only the answer text is reversed
    assert prompts(task.eval_examples) == prompts(plain.eval_examples)
    assert prompts(task.train_pool[:100]) == prompts(plain.train_pool[:100])
    for e, p in zip(task.train_pool[:100], plain.train_pool[:100]):
        assert e.answer == p.answer[::-1] and task.score(e, e.answer) == 1.0
        if p.answer != p.answer[::-1]:
            assert task.score(e, p.answer) == 0.0  # the plain-order answer is wrong here
    e = next(x for x in get_task("add2r").train_pool if x.prompt == "23+49=")
    assert e.answer == "27"


def test_task_kwargs_reach_the_task_and_bad_ones_are_config_errors():
    from grouprl.train import ConfigError, build_config
    from grouprl.train.task_source import load_task

    t = load_task(build_config({"task": "add3r", "task_kwargs": {"train_size": 1234}}))
    assert len(t.train_pool) == 1234 and t.name == "add3r"
    with pytest.raises(ConfigError, match="task_kwargs .*train_sise"):
        load_task(build_config({"task": "add2", "task_kwargs": {"train_sise": 5}}))

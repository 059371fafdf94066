"""textarena adapter: a scripted win, invalid moves, seeds and the private random streams, the rollout.

The adapter's tests skip only when textarena itself is not installed (it is optional); the test of
the install hint runs without it.
"""

from __future__ import annotations

import random
import sys

import pytest
import torch

from grouprl.envs import get_env


def test_without_textarena_raises_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "textarena", None)
    with pytest.raises(ImportError, match="grouprl\\[textarena\\]"):
        get_env("textarena", env_id="GuessTheNumber-v0")


def _has_textarena() -> bool:
    import importlib.util

    return importlib.util.find_spec("textarena") is not None


# Per test, not at module level: a module-level importorskip would also skip the test above, which
# needs no textarena (textarena is optional and not in the test extra).
needs_textarena = pytest.mark.skipif(not _has_textarena(), reason="textarena is not installed (pip install grouprl[textarena])")


def _bisect(env, seed):
    """Play GuessTheNumber by bisection; returns the (reward, info) of every step."""
    env.reset(seed=seed)
    lo, hi, out = 1, 20, []
    while True:
        guess = (lo + hi) // 2
        obs, r, term, trunc, info = env.step(f"I guess <action>[{guess}]</action>")
        out.append((guess, r, term, info["invalid_action"]))
        if term or trunc:
            return out, info
        if "higher" in obs:
            lo = guess + 1
        else:
            assert "lower" in obs, obs
            hi = guess - 1


@needs_textarena
def test_guess_the_number_bisection_wins_and_is_deterministic_under_seed():
    env = get_env("textarena", env_id="GuessTheNumber-v0")
    steps, info = _bisect(env, seed=5)
    assert "Guess The Number" in env.action_prompt and env.valid_actions() == []  # the rules, known after reset
    assert info["success"] and steps[-1][1] == 1.0 and steps[-1][2]
    assert all(r == 0.0 for _, r, _, _ in steps[:-1]) and not any(inv for *_, inv in steps)
    assert len(steps) <= 5  # bisection over 1..20
    assert _bisect(get_env("textarena", env_id="GuessTheNumber-v0"), seed=5)[0] == steps
    targets = {_bisect(env, seed=s)[0][-1][0] for s in range(12)}
    assert len(targets) > 3  # the hidden number follows the seed


@needs_textarena
def test_global_random_is_left_alone_and_lockstep_envs_stay_private():
    random.seed(123)
    expected = random.Random(123).random()
    a, b = get_env("textarena", env_id="GuessTheNumber-v0"), get_env("textarena", env_id="GuessTheNumber-v0")
    a.reset(seed=1)
    b.reset(seed=2)
    a.step("[10]")
    assert random.random() == expected  # textarena's random.seed(seed) did not leak out
    # interleaving two environments gives the same games as playing them one after the other
    solo = _bisect(get_env("textarena", env_id="GuessTheNumber-v0"), seed=1)[0]
    assert _bisect(a, seed=1)[0] == solo


@needs_textarena
def test_invalid_move_is_flagged_and_state_key_is_the_transcript():
    env = get_env("textarena", env_id="GuessTheNumber-v0", invalid_penalty=-0.1)
    env.reset(seed=0)
    k0 = env.state_key()
    obs, r, term, trunc, info = env.step("no number here")
    assert info["invalid_action"] and r == pytest.approx(-0.1) and not term
    assert "invalid move" in obs.lower()
    assert env.state_key() != k0
    env2 = get_env("textarena", env_id="GuessTheNumber-v0")
    env2.reset(seed=0)
    assert env2.state_key() == k0  # same seed, same start
    env2.step("no number here")
    assert env2.state_key() == env.state_key()  # same moves, same state
    assert env.parse_action("  ") is None and env.parse_action("x <action>[3]</action>") == "[3]"


@needs_textarena
def test_tower_of_hanoi_solution():
    env = get_env("textarena", env_id="TowerOfHanoi-v0")
    obs, _ = env.reset(seed=0)
    assert "A: [3, 2, 1]" in obs
    moves = ["A C", "A B", "C B", "A C", "B A", "B C", "A C"]
    for i, m in enumerate(moves):
        obs, r, term, trunc, info = env.step(f"[{m}]")
        assert term == (i == len(moves) - 1), (i, obs)
    assert r == 1.0 and info["success"]


@needs_textarena
def test_unknown_and_multi_player_ids():
    with pytest.raises(ValueError, match="unknown env_id"):
        get_env("textarena", env_id="NoSuchGame-v0")
    env = get_env("textarena", env_id="TicTacToe-v0")
    with pytest.raises(ValueError, match="single-player"):
        env.reset(seed=0)


@needs_textarena
def test_multiturn_rollout_on_textarena():
    from grouprl.models import build_model, build_tokenizer
    from grouprl.rollout.multiturn import run_episodes

    tok = build_tokenizer("char")
    model = build_model("tiny", tok, seed=0)
    ab = run_episodes(model, tok, lambda: get_env("textarena", env_id="GuessTheNumber-v0"), [0, 1], group_size=2,
                      max_turns=3, instruction="Guess 1-20 as [n].", max_new_tokens=4,
                      generator=torch.Generator().manual_seed(0))
    assert len(ab) == int(ab.episode_length.sum()) and int(ab.episode_length.max()) <= 3
    # replaying each trajectory's texts on a fresh environment gives the same state keys and flags
    from grouprl.advantages.gigpo import state_keys

    keys, flags, order = [], [], []
    for e in range(4):
        env = get_env("textarena", env_id="GuessTheNumber-v0")
        env.reset(seed=[0, 1][e // 2])
        for r in (ab.trajectory == e).nonzero().squeeze(1).tolist():
            order.append(r)
            keys.append(env.state_key())
            flags.append(env.step(ab.texts[r])[4]["invalid_action"])
    assert torch.equal(ab.state_key[order], state_keys(keys)) and ab.invalid[order].tolist() == flags

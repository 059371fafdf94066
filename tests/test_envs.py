"""Text environments: determinism under seed, invalid actions, replayed state keys, solvable levels,
tic-tac-toe results, the registry and the optional gymnasium adapter."""

import ast
import pathlib
import random
import sys
from collections import deque

import pytest
from conftest import needs

from grouprl.advantages.gigpo import state_keys
from grouprl.core import UnknownName
from grouprl.envs import ENVS, get_env
from grouprl.envs.gridworld import LAYOUTS, GridWorld
from grouprl.envs.sokoban import LEVELS
from grouprl.envs.tictactoe import TicTacToe, winner

BUILTIN = ("gridworld", "sokoban", "tictactoe")


def rollout(env, seed, policy_seed, n=12):
    """Play random legal (and some garbage) actions; return observations, state keys, rewards, flags."""
    rng = random.Random(policy_seed)
    obs, _ = env.reset(seed=seed)
    out = [(obs, env.state_key(), None, None)]
    for _ in range(n):
        acts = env.valid_actions()
        text = "hmm, no idea" if rng.random() < 0.2 else f"I choose <action>{rng.choice(acts)}</action>"
        obs, r, term, trunc, info = env.step(text)
        out.append((obs, env.state_key(), r, info["invalid_action"]))
        if term or trunc:
            break
    return out


@pytest.mark.parametrize("name", BUILTIN)
def test_deterministic_under_seed_and_replay_gives_same_keys(name):
    for seed in range(4):
        a = rollout(get_env(name), seed, policy_seed=seed + 10)
        b = rollout(get_env(name), seed, policy_seed=seed + 10)
        assert a == b
        ka = state_keys([k for _, k, _, _ in a])
        kb = state_keys([k for _, k, _, _ in b])
        assert ka.tolist() == kb.tolist()
    # the same seed resets to the same state, so trajectories of one episode group share states
    e1, e2 = get_env(name), get_env(name)
    assert e1.reset(seed=5)[0] == e2.reset(seed=5)[0] and e1.state_key() == e2.state_key()


@pytest.mark.parametrize("name", BUILTIN)
def test_invalid_actions_are_flagged_and_change_nothing(name):
    env = get_env(name)
    obs, _ = env.reset(seed=1)
    key = env.state_key()
    o2, r, term, trunc, info = env.step("let me think about it")
    assert info["invalid_action"] is True and info["action"] is None
    assert o2 == obs and env.state_key() == key and r == 0.0 and not term
    o3, *_ , info = env.step(f"<action>{env.valid_actions()[0]}</action>")
    assert info["invalid_action"] is False


def test_invalid_penalty_and_truncation():
    env = GridWorld(max_steps=3, invalid_penalty=-0.5)
    env.reset(seed=0)
    assert env.step("??")[1] == -0.5
    env.step("<action>up</action>")  # into the border: legal, stays
    _, _, term, trunc, _ = env.step("<action>left</action>")
    assert trunc and not term
    with pytest.raises(RuntimeError, match="finished episode"):
        env.step("up")


def test_parse_action():
    env = GridWorld()
    env.reset(seed=0)
    assert env.parse_action("<action> Down </action>") == "down"
    assert env.parse_action("first up, then left") == "left"  # last legal word
    assert env.parse_action("<action>down</action> or maybe <action>jump</action>") is None  # last tag rules
    assert env.parse_action("downwards") is None


def _bfs(env, seed):
    """Shortest action sequence to a success from the reset state (state = state_key)."""
    env.reset(seed=seed)
    start = env.state_key()
    paths = {start: []}
    queue = deque([[]])
    while queue:
        path = queue.popleft()
        for a in ["up", "down", "left", "right"]:
            env.reset(seed=seed)
            ok = True
            for p in path + [a]:
                _, r, term, trunc, info = env.step(p)
                if term or trunc:
                    ok = False
                    break
            if not ok:
                if info.get("success"):
                    return path + [a]
                continue
            key = env.state_key()
            if key not in paths:
                paths[key] = path + [a]
                queue.append(path + [a])
    return None


@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
def test_every_gridworld_layout_is_solvable(layout):
    env = GridWorld(max_steps=30)
    path = _bfs(env, layout)
    assert path is not None and len(path) <= 20
    env.reset(seed=layout)
    for a in path:
        obs, r, term, trunc, info = env.step(a)
    assert term and r == 1.0 and info["success"]


def test_gridworld_layout_by_seed_and_holes():
    env = GridWorld()
    env.reset(seed=len(LAYOUTS) + 1)
    assert env.layout_id == 1
    env = GridWorld(layout=0)
    env.reset(seed=0)
    env.step("right")
    _, r, term, _, info = env.step("down")  # (1, 1) is a hole in layout 0
    assert term and r == 0.0 and info["success"] is False
    with pytest.raises(ValueError, match="layout="):
        GridWorld(layout=99)


def test_gridworld_slip_is_deterministic_under_seed():
    def run(seed):
        env = GridWorld(slip=0.5, max_steps=10)
        env.reset(seed=seed)
        return [env.step(a)[0] for a in ["right", "right", "down", "down"]]

    assert run(3) == run(3)
    assert any(run(s) != run(3) for s in range(4, 12))  # slips depend on the seed


def test_gridworld_random_start_and_position_line():
    from grouprl.envs.gridworld import _start_cells
    from grouprl.train.agent_sft import EXPERTS

    starts = set()
    for seed in range(40):
        env = GridWorld(layout=1, random_start=True, show_position=True, max_steps=30)
        obs, _ = env.reset(seed=seed)
        starts.add(env.pos)
        assert env.pos in _start_cells(1) and LAYOUTS[1][env.pos[0]][env.pos[1]] in "S."
        assert obs.splitlines()[-1] == f"Cell {'abcdefghijklmnopqrstuvwxy'[env.pos[0] * 5 + env.pos[1]]}."
        assert obs.splitlines()[env.pos[0]].split()[env.pos[1]] == "A"
        again = GridWorld(layout=1, random_start=True)
        again.reset(seed=seed)
        assert again.pos == env.pos and "Cell" not in again.render()  # the seed fixes the start
        for _ in range(30):  # every start cell can reach G: the expert gets there
            *_, term, trunc, info = env.step(EXPERTS["gridworld"](env))
            if term or trunc:
                break
        assert info["success"], seed
    assert len(starts) > 5
    # row 2 of layout 2 left of the hole is cut off from G by holes and walls: never a start
    assert (2, 0) not in _start_cells(2) and (0, 0) in _start_cells(2)


SOKOBAN_SOLUTIONS = {
    0: ["right", "right"],
    1: ["left", "up", "right", "up", "left"],
    2: ["right", "down", "up", "right", "down"],
    3: ["right", "right", "down", "up", "left", "left", "down", "down", "right", "right"],
}


@pytest.mark.parametrize("level", range(len(LEVELS)))
def test_sokoban_levels_are_solved_by_their_solutions(level):
    env = get_env("sokoban")
    env.reset(seed=level)
    for i, a in enumerate(SOKOBAN_SOLUTIONS[level]):
        obs, r, term, trunc, info = env.step(f"<action>{a}</action>")
        assert term == (i == len(SOKOBAN_SOLUTIONS[level]) - 1)
    assert r == 1.0 and info["success"] and "$" not in obs


def test_sokoban_pushes_and_blocks():
    env = get_env("sokoban", level=0, box_reward=0.5, step_penalty=0.1)
    obs, _ = env.reset(seed=0)
    assert obs.splitlines()[1] == "#@_$.#"
    _, r, *_ = env.step("up")  # wall: nothing moves
    assert env.player == (1, 1) and r == pytest.approx(-0.1)
    env.step("right")
    obs, r, term, *_ = env.step("right")
    assert obs.splitlines()[1] == "#__@*#" and term and r == pytest.approx(-0.1 + 0.5 + 1.0)


def play(env, moves):
    res = None
    for m in moves:
        res = env.step(m)
    return res


def test_tictactoe_win_for_each_player_and_draw():
    env = TicTacToe()
    env.reset(seed=0)
    assert env.num_agents == 2 and env.current_agent == 0
    obs, r, term, _, info = play(env, ["1", "4", "2", "5", "3"])  # X: top row
    assert term and r == 1.0 and info["winner"] == "X" and info["agent_rewards"] == [1.0, -1.0] and info["agent"] == 0
    assert "X wins" in obs
    env.reset(seed=0)
    _, r, term, _, info = play(env, ["1", "4", "2", "5", "9", "6"])  # O: middle row
    assert term and info["winner"] == "O" and info["agent_rewards"] == [-1.0, 1.0] and info["agent"] == 1
    env.reset(seed=0)
    _, r, term, _, info = play(env, ["1", "2", "3", "5", "4", "6", "8", "7", "9"])
    assert term and info["winner"] == "draw" and info["agent_rewards"] == [0.0, 0.0]


def test_tictactoe_turns_and_invalid_moves():
    env = TicTacToe()
    env.reset(seed=0)
    env.step("5")
    assert env.current_agent == 1
    _, _, _, _, info = env.step("<action>5</action>")  # occupied
    assert info["invalid_action"] and info["agent"] == 1 and env.current_agent == 1
    assert "5" not in env.valid_actions()


def test_winner_function():
    assert winner("XXX......") == "X"
    assert winner("O...O...O") == "O"
    assert winner("XOXXOOOXX") == "draw"
    assert winner("XO.......") is None


def test_minimax_opponent_never_loses():
    rng = random.Random(0)
    for game in range(20):
        env = TicTacToe(opponent="minimax", model_plays="X" if game % 2 else "O")
        env.reset(seed=game)
        term = trunc = False
        while not (term or trunc):
            _, r, term, trunc, info = env.step(rng.choice(env.valid_actions()))
        assert r <= 0.0 and env.num_agents == 1


def test_tictactoe_openings_and_random_opponent_follow_the_seed():
    a = rollout(TicTacToe(opponent="random", opening_moves=2), 7, policy_seed=1)
    b = rollout(TicTacToe(opponent="random", opening_moves=2), 7, policy_seed=1)
    assert a == b
    assert a[0][0].count("X") + a[0][0].count("O") >= 2


def test_registry():
    assert set(BUILTIN) <= set(ENVS)
    with pytest.raises(UnknownName, match="did you mean 'gridworld'"):
        get_env("gridworl")


def test_envs_import_only_core():
    root = pathlib.Path(__file__).resolve().parents[1] / "src" / "grouprl" / "envs"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert node.module == "core", f"{path.name} imports grouprl.{node.module}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("grouprl"), path.name


# --------------------------------------------------------------------------- gymnasium adapter
def test_gym_adapter_without_gymnasium(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)
    with pytest.raises(ImportError, match="pip install gymnasium"):
        get_env("frozenlake")


needs_gym = needs("gymnasium")


@needs_gym
@pytest.mark.parametrize("name", ["frozenlake", "taxi", "cliffwalking", "blackjack"])
def test_gym_adapter(name):
    a = rollout(get_env(name), 3, policy_seed=4, n=8)
    b = rollout(get_env(name), 3, policy_seed=4, n=8)
    assert a == b
    assert "\x1b" not in a[0][0]
    env = get_env(name)
    env.reset(seed=0)
    assert env.step("nonsense")[4]["invalid_action"]


@needs_gym
def test_gym_frozenlake_text_and_solution():
    env = get_env("frozenlake", is_slippery=False)
    obs, _ = env.reset(seed=0)
    assert obs.splitlines()[0] == "A F F F"
    for a in ["down", "down", "right", "right", "down", "right"]:
        obs, r, term, trunc, info = env.step(a)
    assert term and r == 1.0
    assert env.state_key() == ("FrozenLake-v1", 15)


@needs_gym
def test_gym_any_id_and_make_kwargs():
    env = get_env("gym", env_id="FrozenLake8x8-v1", is_slippery=False)
    obs, _ = env.reset(seed=0)
    assert len(obs.splitlines()) == 8 and env.valid_actions() == ["left", "down", "right", "up"]

"""Multi-turn rollout: lock-step batching, state keys vs a replay, max_turns, self-play credit."""

from __future__ import annotations

import torch

from grouprl.advantages.gigpo import state_keys
from grouprl.envs import get_env
from grouprl.models import build_model, build_tokenizer
from grouprl.rollout import multiturn
from grouprl.rollout.multiturn import build_prompt, run_episodes


def _model():
    torch.manual_seed(0)
    tok = build_tokenizer("char")
    return build_model("1M", tok, seed=0), tok


def test_rows_match_replay_and_one_call_per_turn(monkeypatch):
    model, tok = _model()
    calls = []
    real = multiturn.sample

    def counting(model, prompts, **kw):
        calls.append(len(prompts))
        return real(model, prompts, **kw)

    monkeypatch.setattr(multiturn, "sample", counting)
    seeds = [3, 6]
    ab = run_episodes(model, tok, lambda: get_env("gridworld"), seeds, group_size=3, max_turns=4, history_len=1,
                      instruction="Reach G.", max_new_tokens=4, generator=torch.Generator().manual_seed(0))
    # one sample call per turn, for all live environments at once
    assert len(calls) == ab.model_calls == int(ab.episode_length.max())
    assert calls[0] == 6 and sum(calls) == len(ab)
    assert int(ab.episode_length.max()) <= 4 and int(ab.step.max()) <= 3
    # replay every trajectory with its recorded actions: the state keys match
    replay = []
    for e in range(6):
        env = get_env("gridworld")
        env.reset(seed=seeds[e // 3])
        rows = (ab.trajectory == e).nonzero().squeeze(1).tolist()
        assert [int(ab.step[r]) for r in rows] == list(range(len(rows)))
        for r in rows:
            replay.append((r, env.state_key()))
            env.step(ab.texts[r])
    order = [r for r, _ in replay]
    assert torch.equal(ab.state_key[order], state_keys([k for _, k in replay]))
    assert torch.equal(ab.group, ab.trajectory // 3)
    # episode return on every row; response mask/logprobs consistent
    ret = torch.zeros(6).index_add_(0, ab.trajectory, ab.step_rewards)
    assert torch.allclose(ab.rewards, ret[ab.trajectory])
    assert ab.gen.logprobs[~ab.gen.response_mask].abs().sum() == 0


def test_max_turns_one():
    model, tok = _model()
    ab = run_episodes(model, tok, lambda: get_env("gridworld"), [0], group_size=2, max_turns=1, greedy=True,
                      instruction="Reach G.", max_new_tokens=3)
    assert len(ab) == 2 and ab.model_calls == 1 and ab.step.tolist() == [0, 0]


def test_selfplay_loser_credited_on_last_turn(monkeypatch):
    tok = build_tokenizer("char")
    moves = iter(["1", "4", "2", "5", "3"])  # X wins on its third move

    def fake_sample(model, prompts, **kw):
        text = next(moves)
        ids = torch.tensor([tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]])
        from grouprl.rollout.generation import Generation

        return Generation(prompt_ids=ids, prompt_mask=torch.ones_like(ids, dtype=torch.bool), response_ids=ids,
                          response_mask=torch.ones_like(ids, dtype=torch.bool), logprobs=torch.zeros(ids.shape),
                          truncated=torch.zeros(1, dtype=torch.bool), prompt_index=torch.zeros(1, dtype=torch.long),
                          pad_id=tok.pad_token_id)

    monkeypatch.setattr(multiturn, "sample", fake_sample)
    ab = run_episodes(None, tok, lambda: get_env("tictactoe"), [0], group_size=1, max_turns=9)
    assert ab.agent.tolist() == [0, 1, 0, 1, 0]
    assert ab.step_rewards.tolist() == [0, 0, 0, -1, 1]  # O's -1 lands on its last move
    assert ab.rewards.tolist() == [1, -1, 1, -1, 1]


def test_build_prompt_history():
    p = build_prompt("Do.", [("o1", "a1"), ("o2", "a2")], "o3", history_len=1)
    assert p == "Do.\no2\nAction: a2\no3\nAction: "
    assert build_prompt("", [("o1", "a1")], "o2", 0) == "o2\nAction: "


def test_episode_outcome_fields_match_the_rows():
    model, tok = _model()
    ab = run_episodes(model, tok, lambda: get_env("tictactoe", opponent="random", invalid_penalty=-0.5), [0, 1],
                      group_size=3, max_turns=6, instruction="Play.", max_new_tokens=3,
                      generator=torch.Generator().manual_seed(2))
    for e in range(6):
        rows = (ab.trajectory == e).nonzero().squeeze(1)
        last = int(rows[-1])
        # the final reward is the last row's reward minus nothing (a finishing move is a legal one)
        if bool(ab.episode_done[e]):
            assert not bool(ab.invalid[last]) and float(ab.episode_final_reward[e]) == float(ab.step_rewards[last])
            assert bool(ab.episode_success[e]) == (float(ab.episode_final_reward[e]) > 0)
        else:
            assert float(ab.episode_final_reward[e]) == 0.0 and int(ab.episode_length[e]) == 6
        # the return also holds the invalid-move penalties of the episode
        assert abs(float(ab.episode_return[e]) - float(ab.step_rewards[rows].sum())) < 1e-6

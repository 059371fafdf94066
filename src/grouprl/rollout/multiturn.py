"""Multi-turn rollouts: many text environments in lock-step, one batched ``sample`` call per turn.

``run_episodes(model, tok, "gridworld", seeds=[3, 7], group_size=4, ...)`` resets
``len(seeds) * group_size`` environments (G per seed: the episode group), then, turn by turn:

1. builds every live environment's prompt: the instruction, the last ``history_len`` turns
   (observation and the action taken) and the current observation, ending in ``"Action: "``;
2. samples one response per live environment in ONE ``sample`` call (KV-cached, batched);
3. parses and applies each action (``env.step``), recording the state key *before* the step, the
   step reward and the invalid-action flag.

An environment leaves the batch when its episode ends (terminated or truncated by the env) or after
``max_turns`` turns (then ``truncated``). The result holds one row per step: prompt ids,
response ids/mask, sampling log-probs, and the per-row fields of an agent ``Rollouts`` batch
(``trajectory``, ``step``, ``state_key``, ``transition_key``, ``step_rewards``, ``rewards`` = the
episode return of the row's agent, ``group`` = the seed's index, ``agent``, the invalid flag).

Two-player games (``env.num_agents > 1``, e.g. tic-tac-toe self-play): the same policy plays both
sides; each row carries the acting agent, and every agent's reward of a step (``info["agent_rewards"]``)
is credited to that agent's latest row in the game, so the loser's −1 lands on its last move.
``rewards`` is then the agent's own return in the game.

State keys are hashed once per batch with ``grouprl.advantages.gigpo.state_keys`` (transition keys
with ``grouprl.advantages.salt.transition_keys``), from the environments' ``state_key()``.

The model may live on any device (sampling runs there, under whatever autocast region the caller
opened); the returned batch is assembled on the CPU, and the caller moves it (``AgentBatch.to``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .generation import Generation, pad_right
from .sampling import left_pad, sample

__all__ = ["AgentBatch", "run_episodes", "build_prompt"]


def build_prompt(instruction: str, history: Sequence[tuple[str, str]], observation: str, history_len: int) -> str:
    """The turn's prompt text: instruction, the last ``history_len`` (observation, action) turns, the
    current observation, then ``"Action: "``."""
    parts = [instruction] if instruction else []
    for obs, act in list(history)[-history_len:] if history_len > 0 else []:
        parts.append(f"{obs}\nAction: {act}")
    parts.append(f"{observation}\nAction: ")
    return "\n".join(parts)


@dataclass
class AgentBatch:
    """One row per agent step; token tensors as in ``Generation`` plus the agent fields."""

    gen: Generation
    trajectory: Tensor  # (B,) global environment index (the game id in self-play)
    step: Tensor  # (B,) turn index within the trajectory
    group: Tensor  # (B,) index of the seed (the episode group)
    agent: Tensor  # (B,) acting agent
    state_key: Tensor  # (B,) int64 hash of env.state_key() before the step
    transition_key: Tensor  # (B,) int64 hash of (state, parsed action, next state)
    step_rewards: Tensor  # (B,) float32
    rewards: Tensor  # (B,) float32: the episode return of the row's agent
    invalid: Tensor  # (B,) bool
    texts: list[str]
    episode_return: Tensor  # (E,) agent 0's return per environment
    episode_success: Tensor  # (E,) bool
    episode_length: Tensor  # (E,) turns
    episode_done: Tensor | None = None  # (E,) bool: ended by the environment (terminated), not cut off
    episode_final_reward: Tensor | None = None  # (E,) agent 0's reward on the step that ended the episode
    model_calls: int = 0
    raw_states: list = field(default_factory=list)
    actions: list = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.trajectory.shape[0])

    def to(self, device: torch.device | str) -> "AgentBatch":
        """The batch with its token tensors and per-row fields on ``device`` (episode summaries stay
        on the host); on the batch's own device every tensor is returned as is."""
        g = self.gen
        gen = dataclasses.replace(g, **{f: getattr(g, f).to(device) for f in
                                        ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs",
                                         "truncated", "prompt_index")})
        rows = ("trajectory", "step", "group", "agent", "state_key", "transition_key", "step_rewards", "rewards", "invalid")
        return dataclasses.replace(self, gen=gen, **{f: getattr(self, f).to(device) for f in rows})


def run_episodes(
    model: torch.nn.Module,
    tokenizer: Any,
    env_factory: Callable[[], Any],
    seeds: Sequence[int],
    *,
    group_size: int = 1,
    max_turns: int = 20,
    history_len: int = 0,
    instruction: str | None = None,
    max_new_tokens: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> AgentBatch:
    """Play ``group_size`` episodes per seed in lock-step; see the module docstring."""
    from ..advantages.gigpo import state_keys
    from ..advantages.salt import transition_keys

    if max_turns < 1:
        raise ValueError(f"run_episodes: max_turns={max_turns}; it must be >= 1.")
    if group_size < 1 or len(seeds) == 0:
        raise ValueError(f"run_episodes: need >= 1 seed and group_size >= 1 (got {len(seeds)} seeds, G={group_size}).")
    envs = [env_factory() for _ in range(len(seeds) * group_size)]
    env_group = [i // group_size for i in range(len(envs))]
    obs = [env.reset(seed=int(seeds[env_group[i]]))[0] for i, env in enumerate(envs)]
    instr = instruction if instruction is not None else envs[0].action_prompt
    n_agents = int(getattr(envs[0], "num_agents", 1))
    history: list[list[tuple[str, str]]] = [[] for _ in envs]
    turns = [0] * len(envs)
    live = list(range(len(envs)))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    # per-row records
    r_prompt, r_resp, r_lp, r_env, r_step, r_agent, r_state, r_act, r_next, r_rew, r_inv, texts = ([] for _ in range(12))
    last_row = [[-1] * n_agents for _ in envs]
    success = [False] * len(envs)
    ended = [False] * len(envs)
    final = [0.0] * len(envs)
    calls = 0
    while live:
        prompts = [bos + tokenizer.encode(build_prompt(instr, history[i], obs[i], history_len), add_special_tokens=False)
                   for i in live]
        gen = sample(model, prompts, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                     max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy,
                     generator=generator)
        calls += 1
        lengths = gen.response_mask.sum(dim=1).tolist()
        ids = gen.response_ids.tolist()
        turn_lp = gen.logprobs.float().cpu()  # the batch is assembled on the host (one copy per turn)
        decoded = tokenizer.batch_decode([row[:n] for row, n in zip(ids, lengths)], skip_special_tokens=True)
        still = []
        for j, i in enumerate(live):
            env = envs[i]
            agent = int(env.current_agent)
            r_state.append(env.state_key())
            nobs, _rew, term, trunc, info = env.step(decoded[j])
            row = len(r_env)
            r_prompt.append(prompts[j])
            r_resp.append(ids[j][: lengths[j]])
            r_lp.append(turn_lp[j, : lengths[j]])
            r_env.append(i)
            r_step.append(turns[i])
            r_agent.append(agent)
            r_act.append(info.get("action"))
            r_inv.append(bool(info.get("invalid_action", False)))
            r_next.append(env.state_key())
            r_rew.append(0.0)
            texts.append(decoded[j])
            last_row[i][agent] = row
            for a, ra in enumerate(info.get("agent_rewards", [_rew])):  # credit each agent's latest row
                if ra and last_row[i][a] >= 0:
                    r_rew[last_row[i][a]] += float(ra)
            success[i] = success[i] or bool(info.get("success", False))
            ended[i] = bool(term)
            if term:
                final[i] = float(info.get("agent_rewards", [_rew])[0])
            history[i].append((obs[i], info["action"] if info.get("action") is not None else "invalid"))
            obs[i] = nobs
            turns[i] += 1
            if not (term or trunc) and turns[i] < max_turns:
                still.append(i)
        live = still

    p_ids, p_mask = left_pad(r_prompt, tokenizer.pad_token_id)
    T = max(max(len(r) for r in r_resp), 1)
    resp = torch.stack([pad_right(torch.tensor(r, dtype=torch.int64), T, tokenizer.pad_token_id) for r in r_resp])
    resp_mask = torch.arange(T)[None, :] < torch.tensor([len(r) for r in r_resp])[:, None]
    lp = torch.stack([pad_right(x, T, 0.0) for x in r_lp])
    env_idx = torch.tensor(r_env, dtype=torch.int64)
    agent_t = torch.tensor(r_agent, dtype=torch.int64)
    step_rewards = torch.tensor(r_rew, dtype=torch.float32)
    # the return of each (environment, agent), written on every row of that agent in that episode
    ret = torch.zeros(len(envs) * n_agents).index_add_(0, env_idx * n_agents + agent_t, step_rewards)
    g = Generation(prompt_ids=p_ids, prompt_mask=p_mask, response_ids=resp, response_mask=resp_mask, logprobs=lp,
                   truncated=~torch.tensor([t == tokenizer.eos_token_id for t in (r[-1] if r else -1 for r in r_resp)]),
                   prompt_index=torch.tensor([env_group[i] for i in r_env], dtype=torch.int64),
                   pad_id=tokenizer.pad_token_id)
    g.texts = texts
    return AgentBatch(
        gen=g, trajectory=env_idx, step=torch.tensor(r_step, dtype=torch.int64), group=g.prompt_index.clone(),
        agent=agent_t, state_key=state_keys(r_state), transition_key=transition_keys(r_state, r_act, r_next),
        step_rewards=step_rewards, rewards=ret[env_idx * n_agents + agent_t], invalid=torch.tensor(r_inv, dtype=torch.bool),
        texts=texts, episode_return=ret.view(len(envs), n_agents)[:, 0].clone(),
        episode_success=torch.tensor(success), episode_length=torch.tensor(turns), episode_done=torch.tensor(ended),
        episode_final_reward=torch.tensor(final, dtype=torch.float32),
        model_calls=calls,
        raw_states=r_state, actions=r_act,
    )

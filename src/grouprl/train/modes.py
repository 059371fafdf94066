"""What each rollout source of the training loop provides, as data: the two modes of ``grouprl train``.

The loop (:mod:`grouprl.train.loop`) is one step function; only the rollout source differs:

* ``task`` (no ``env=``): prompts of a task's pool -> G responses each -> verifier rewards
  (:mod:`grouprl.train.task_source`);
* ``env`` (``env=NAME``): environment seeds -> G episodes each -> one row per agent step
  (:mod:`grouprl.train.env_source`).

Each mode declares the ``Rollouts`` fields its batches hold (``fields``) and the config options it
does not read (``unread``: option -> why, and what to do). The config check
(:func:`grouprl.train.config_checks.check_mode`) refuses at load time an estimator or loss that
needs a field the mode (and the chosen credit hook, ``Credit.provides``) does not provide, and any
unread option set to something other than its default, naming the option and the mode. Nothing
here names a method: a method's needs are its registry entry's ``needs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MODES", "Mode", "Rollout", "mode_of"]


@dataclass(frozen=True)
class Mode:
    """One rollout source's declaration (see the module docstring)."""

    name: str
    chosen_by: str  # how a config selects it, for messages
    other: str  # how to switch to the other mode, for messages
    fields: frozenset[str]
    unread: dict[str, str] = field(default_factory=dict)


# the fields both sources' batches hold: verifier or environment rewards, the group (prompt or seed),
# the response mask, sampling / old-policy log-probs, token entropies and the truncation flags
_COMMON = frozenset({"rewards", "group", "mask", "logprobs", "old_logprobs", "entropy", "truncated"})

_ENV_ONLY = "it configures environment runs (env=NAME); task runs do not read it. Remove it, or set env="
_GUARD = ("it sets the verifier guard of task runs; in env runs the environment gives the rewards and no "
          "verifier runs. Remove it, or drop env=")

MODES: dict[str, Mode] = {
    "task": Mode(
        name="task",
        chosen_by="no env=",
        other="set env=NAME (grouprl list shows the environments)",
        # answer: from task.extract of each response (when declared); reward_components: from
        # reward_models / reward_components (the method check asks for one of them)
        fields=_COMMON | {"data_group", "answer", "reward_components"},
        unread={
            "env_kwargs": _ENV_ONLY,
            "eval_env_kwargs": _ENV_ONLY,
            "max_turns": _ENV_ONLY,
            "history_len": _ENV_ONLY,
            "instruction": _ENV_ONLY,
            "expert_noise": "it is the noise of the env warm start's expert; task runs warm-start on the task's "
                            "reference answers. Remove it, or set env=",
        },
    ),
    "env": Mode(
        name="env",
        chosen_by="env=NAME",
        other="drop env= (a task run)",
        # one row per agent step: the episode group is the seed; extras["invalid_action"]
        fields=_COMMON | {"trajectory", "step", "state_key", "transition_key", "step_rewards", "agent", "role",
                          "invalid_action"},
        unread={
            "task": "it names a task's prompt pool; env runs draw environment seeds. Remove task=, or drop env=",
            "task_kwargs": "it configures a task; env runs draw environment seeds. Remove task_kwargs=, or drop env=",
            "sampler": "prompt samplers choose prompts from a task's pool; env runs draw environment seeds "
                       "uniformly. Remove sampler=, or drop env=",
            "sampler_kwargs": "it configures a prompt sampler; env runs draw environment seeds uniformly. Remove "
                              "sampler_kwargs=, or drop env=",
            "credit": "token/segment credit hooks work on single-turn task responses (continuations, trees, "
                      "windows, a critic of one response); env runs train on agent steps. Remove credit=, or "
                      "drop env=",
            "credit_kwargs": "it configures a credit hook; env runs take none. Remove credit_kwargs=, or drop env=",
            "kl_in_reward": "an env row's reward is its agent's episode return, shared by all of its steps, so a "
                            "per-row KL penalty on it has no defined reading. Remove kl_in_reward= (the KL stays in "
                            "the loss), or drop env=",
            "reward_fn": "it replaces a task's verifier; in env runs the environment gives the rewards. Remove "
                         "reward_fn=, or drop env=",
            "reward_components": "it scores task responses against their examples; env runs have no examples. "
                                 "Remove reward_components=, or drop env=",
            "reward_models": "it scores task responses; env runs take the environment's rewards. Remove "
                             "reward_models=, or drop env=",
            "overlong_buffer": "DAPO's overlong shaping moves a response's reward by its length; an env row's "
                               "reward is the whole episode's return, so a per-action length penalty on it has "
                               "no defined reading. Remove overlong_buffer= (mask_truncated=true does drop "
                               "truncated actions from the loss), or drop env=",
            "overlong_factor": "it is a parameter of overlong_buffer, which env runs refuse. Remove it, or drop env=",
            "reward_timeout_s": _GUARD,
            "failure_reward": _GUARD,
            "max_failed_reward_steps": _GUARD,
            "sft_target_acc": "it stops the task warm start on a validation slice; the env warm start is a fixed "
                              "sft_steps of SFT on expert turns. Remove it, or drop env=",
            "sft_check_every": "it belongs to sft_target_acc (task warm start); the env warm start has no "
                               "validation checks. Remove it, or drop env=",
            "sft_val_size": "it belongs to sft_target_acc (task warm start); the env warm start has no validation "
                            "slice. Remove it, or drop env=",
            "pass_k": "env evaluation plays each eval seed once greedily and once sampled (greedy_* and "
                      "sampled_* in eval.jsonl); pass@k is a task metric. Remove pass_k=, or drop env=",
            "pass_k_size": "env evaluation has no pass@k (see pass_k). Remove pass_k_size=, or drop env=",
        },
    ),
}


def mode_of(cfg) -> Mode:
    """The mode a config selects: ``env`` when ``cfg.env`` is set, else ``task``."""
    return MODES["env" if cfg.env is not None else "task"]


@dataclass
class Rollout:
    """One step's rows from a rollout source, for the loop.

    ``gen``: the token rows (a ``Generation`` on the training device); ``rewards``: (B,) per row;
    ``fields``: the ``Rollouts`` fields beyond those the loop fills (``group`` and the source's own:
    ``data_group``, or the agent fields); ``texts`` / ``examples``: the decoded responses and their
    examples (``examples`` None where there are none) for the method hooks; ``head``, ``tail``,
    ``extra``: metrics for the step's row (after ``step``, after ``lr``, after the loss terms)."""

    gen: Any  # grouprl.rollout.Generation
    rewards: Any  # torch.Tensor
    fields: dict[str, Any]
    texts: list[str]
    examples: list | None
    head: dict[str, float] = field(default_factory=dict)
    tail: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)

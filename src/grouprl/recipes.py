"""Recipes: a paper's method as data — ``grouprl train method=dapo``.

A recipe is what an optax alias is to its transforms: no code, only a choice of registered parts
(estimator, loss, aggregation, sampler, credit hook, reward shaping) and their hyperparameters,
written as ``TrainConfig`` fields. ``grouprl train method=NAME`` expands the recipe's fields first;
every field the user sets explicitly then overrides them one by one (a ``*_kwargs`` dict key by key),
so ``method=dapo loss_kwargs.eps_high=0.3`` is DAPO with a wider upper clip.

Each recipe names its paper (arXiv id and section) and says in one sentence what it changes relative
to GRPO; ``note`` says which of its settings are choices of this library rather than the paper's.
Hyperparameters that depend on the model scale (learning rate, group size, batch size, lengths)
keep the trainer's defaults unless the recipe says otherwise: the papers' values (e.g. lr 1e-6, G 16
for DAPO) are for 7B–32B models and 20K-token responses, not the tiny CPU models trained here.

This module sits below the trainer: it imports no part of ``grouprl.train``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .core import Registry

__all__ = ["RECIPES", "Recipe", "expand_method", "get_recipe", "register_recipe"]


@dataclass(frozen=True)
class Recipe:
    """A registered method: ``fields`` are ``TrainConfig`` fields (``estimator``, ``loss_kwargs``, ...)."""

    name: str
    paper: str
    changes: str  # one sentence: what it changes relative to GRPO
    fields: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # which settings are this library's choices, not the paper's

    @property
    def summary(self) -> str:
        return self.changes

    def expand(self) -> dict[str, Any]:
        """A fresh copy of the recipe's config fields (callers may mutate it)."""
        return copy.deepcopy(self.fields)


RECIPES: Registry[Recipe] = Registry("recipe")


def register_recipe(name: str, *, paper: str, changes: str, note: str = "", **fields: Any) -> Recipe:
    """Register the recipe ``name``: its config ``fields`` as keywords, e.g. ``estimator="dapo"``."""
    return RECIPES.add(name, Recipe(name=name, paper=paper, changes=changes, fields=fields, note=note))


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``; an unknown name raises ``UnknownName`` with close matches."""
    return RECIPES[name]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_PARTS = ("estimator", "loss", "sampler", "credit")


def expand_method(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with its ``method`` recipe expanded underneath: the recipe's fields first, then
    every field of ``values`` over them (dicts merged key by key). A part the user names differently
    (``sampler=uniform`` over DAPO's ``dapo_dynamic``) drops the recipe's ``*_kwargs`` of that part. No ``method`` (or ``None``):
    ``values`` unchanged. Expanding an already expanded dict gives the same dict."""
    name = values.get("method")
    if name is None:
        return values
    base = get_recipe(str(name)).expand()
    for part in _PARTS:  # a part the user replaces takes none of the recipe's keywords for the old one
        if part in values and values[part] != base.get(part, values[part]):
            base.pop(f"{part}_kwargs", None)
    return _merge(base, values)


_GRPO = "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models, arXiv:2402.03300"
_DAPO = "DAPO: An Open-Source LLM Reinforcement Learning System at Scale, arXiv:2503.14476"

register_recipe(
    "grpo",
    paper=_GRPO + " §4.1 (Eq. 3; §4.2 hyperparameters)",
    changes="The baseline: group-standardised outcome advantage, PPO-clip ε = 0.2, per-response "
    "mean then batch mean, k3 KL to the reference in the loss (β = 0.04).",
    note="ε = 0.2 is not stated in the paper (a reading); lr 1e-6 and G = 64 are not copied (model scale).",
    estimator="grpo",
    loss="ppo_clip",
    loss_kwargs={"eps_low": 0.2, "eps_high": 0.2},
    agg="seq-mean-token-mean",
    kl_coef=0.04,
    kl_type="k3",
)

register_recipe(
    "dr_grpo",
    paper="Understanding R1-Zero-Like Training: A Critical Perspective, arXiv:2503.20783 §3.1 (Eq. 4)",
    changes="Drops GRPO's division by the group std and the per-response 1/|o_i| length "
    "normalisation (a constant token budget instead), and the KL term.",
    note="β = 0 follows the Oat-Zero recipe (a reading, not verified); the constant is norm_const "
    "(default max_new_tokens).",
    estimator="dr_grpo",
    loss="ppo_clip",
    loss_kwargs={"eps_low": 0.2, "eps_high": 0.2},
    agg="seq-mean-token-sum-norm",
    kl_coef=0.0,
)

register_recipe(
    "dapo",
    paper=_DAPO + " §3.1–3.4 (clip-higher, dynamic sampling, token-level loss, overlong shaping)",
    changes="Decoupled clip ε_low 0.2 / ε_high 0.28, dynamic sampling that drops groups without "
    "reward variance, token-level loss aggregation, soft overlong penalty, no KL.",
    note="overlong_buffer = 1 token is our scaling of the paper's L_cache / L_max = 4096 / 20480 "
    "to the default max_new_tokens = 6; max_rounds = 16 caps the generation rounds per step "
    "(verl's max_num_gen_batches; the paper does not cap them).",
    estimator="dapo",
    loss="ppo_clip",
    loss_kwargs={"eps_low": 0.2, "eps_high": 0.28},
    agg="token-mean",
    sampler="dapo_dynamic",
    sampler_kwargs={"filter": "mixed", "max_rounds": 16},
    overlong_buffer=1,
    overlong_factor=1.0,
    kl_coef=0.0,
)

register_recipe(
    "ngrpo",
    paper="NGRPO: Negative-enhanced Group Relative Policy Optimization, arXiv:2509.18851 §3 "
    "(advantage calibration, asymmetric clipping; settings from the reference code)",
    changes="Appends k = 1 virtual sample of reward r_max to each group's statistics (so all-wrong "
    "groups get a negative advantage), clips asymmetrically ε_low 0.16 / ε_high 0.24 with token-level "
    "aggregation, and drops only all-correct groups.",
    note="the settings are the reference code's (the paper's method section is not available); "
    "max_rounds = 16 caps the sampler's generation rounds (our choice).",
    estimator="ngrpo",
    estimator_kwargs={"k": 1, "r_max": 1.0},
    loss="ppo_clip",
    loss_kwargs={"eps_low": 0.16, "eps_high": 0.24, "clip_ratio_c": None},
    agg="token-mean",
    sampler="dapo_dynamic",
    sampler_kwargs={"filter": "all_correct", "r_max": 1.0, "max_rounds": 16},
    kl_coef=0.0,
)

register_recipe(
    "confucius3",
    paper="Confucius3-Math, arXiv:2506.18330 §3 (TER, PSHW, RSR Algorithm 1)",
    changes="Scales the centred group advantage by a hardness weight (PSHW), keeps DAPO's surplus "
    "groups for the next step (RSR), and pulls the mean token entropy toward 0.55 from both sides (TER).",
    note="the report runs TER in stage 1 (GRPO) and PSHW + RSR in stages 2–3 (DAPO); this recipe "
    "combines them in one stage (our choice). ε_low 0.2 / ε_high 0.28 are DAPO's: the report gives no "
    "values. The constant-normaliser aggregation is the proposed reading of PSHW's loss.",
    estimator="pshw",
    loss="ppo_clip",
    loss_kwargs={"eps_low": 0.2, "eps_high": 0.28},
    agg="seq-mean-token-sum-norm",
    sampler="recent_sample_recovery",
    ter=True,
    ter_kwargs={"target": 0.55, "coef": 0.001},
    kl_coef=0.0,
)

register_recipe(
    "srpo",
    paper="GREAM: Generative Reasoning Recommendation via LLMs, arXiv:2510.20815 §3 (SRPO: RSVR + BGAE)",
    changes="Adds to the group advantage an analytic pass@K bonus on exact successes (BGAE, K = 4), "
    "drops groups without reward variance, and uses a dual clip c = 10 with a k3 KL loss (0.001).",
    note="RSVR, the graded prefix reward over hierarchical item indices, is a reward of the task "
    "(pass it as the task's reward), not part of this recipe; settings from the reference code.",
    estimator="bgae",
    estimator_kwargs={"K": 4},
    loss="ppo_clip",
    loss_kwargs={"eps_low": 0.2, "eps_high": 0.2, "clip_ratio_c": 10.0},
    agg="token-mean",
    sampler="dapo_dynamic",
    sampler_kwargs={"filter": "mixed", "max_rounds": 16},
    kl_coef=0.001,
    kl_type="k3",
)

register_recipe(
    "gigpo",
    paper="Group-in-Group Policy Optimization for LLM Agent Training, arXiv:2505.10978 §4 (Eq. 5–8)",
    changes="For multi-step agents: adds to the episode-level group advantage a step-level one over "
    "the steps that share an anchor state (ω = 1, γ = 0.95); needs env=.",
    note="the k3 KL loss coefficient 0.01 is from the authors' run scripts; the environment is the "
    "user's choice (env=...).",
    estimator="gigpo",
    estimator_kwargs={"omega": 1.0, "gamma": 0.95},
    loss="ppo_clip",
    loss_kwargs={"eps_low": 0.2, "eps_high": 0.2},
    agg="token-mean",
    kl_coef=0.01,
    kl_type="k3",
)

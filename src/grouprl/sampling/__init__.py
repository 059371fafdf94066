"""Floor 3: which prompts to roll out next — stateful, seeded, checkpointable samplers.

    from grouprl.sampling import get_sampler, SAMPLERS, informative_groups
    s = get_sampler("dapo_dynamic", num_prompts, seed=0, leftover="carry")
    gen, metrics = s.collect(step, prompts_per_step, generate)

Samplers: ``uniform``, ``dapo_dynamic`` (DAPO / NGRPO), ``recent_sample_recovery``
(Confucius3-Math RSR), ``vade`` (VADE), ``equitable`` and ``equitable_maxmin`` (arXiv 2202.01327).
See docs/sampling.md for how to choose and which parts are proposed readings.
"""

from ._base import BASE_STATE, SAMPLERS, EpochOrder, Sampler, get_sampler, register
from .dynamic import DynamicSampler, NoInformativePrompts, RecentSampleRecovery
from .equitable import EquitableMaxMinSampler, EquitableSampler, fit_power_law, greedy_allocation
from .filters import all_correct_groups, informative_groups, keep_groups
from .uniform import UniformSampler
from .vade import VadeSampler, beta_update, decay_toward_prior, thompson_scores, top_k

__all__ = [
    "SAMPLERS",
    "BASE_STATE",
    "Sampler",
    "EpochOrder",
    "get_sampler",
    "register",
    "informative_groups",
    "all_correct_groups",
    "keep_groups",
    "UniformSampler",
    "DynamicSampler",
    "RecentSampleRecovery",
    "NoInformativePrompts",
    "VadeSampler",
    "beta_update",
    "decay_toward_prior",
    "thompson_scores",
    "top_k",
    "EquitableSampler",
    "EquitableMaxMinSampler",
    "fit_power_law",
    "greedy_allocation",
]

"""Floor 3: reward shaping and reward modelling utilities (imports ``grouprl.core`` only).

* ``overlong``: DAPO's soft overlong punishment and overlong filtering (arXiv:2503.14476);
* ``rsvr``: GREAM's Residual-Sensitive Verifiable Reward over hierarchical item codes
  (arXiv:2510.20815);
* ``copo``: answer extraction and answer ids for COPO's consistency entropy (arXiv:2508.04138);
* ``maxmin``: the EM mixture of Bradley–Terry reward models of MaxMin-RLHF (arXiv:2402.08925);
* ``preferences``: user-labelled preference JSONL, response features and the saved reward models
  that ``grouprl fit-rewards`` writes and ``grouprl train reward_models=DIR`` reads.
"""

from .copo import answer_ids, extract_boxed_answer
from .maxmin import RewardMixture, bt_log_likelihood, e_step, fit_reward_mixture
from .preferences import RewardModels, fit_preference_models, load_preferences, text_features
from .overlong import overlong_filter, overlong_penalty, shape_overlong
from .rsvr import SCORE_LEVELS, parse_item_code, rsvr_reward, rsvr_scores

__all__ = [
    "answer_ids",
    "extract_boxed_answer",
    "RewardMixture",
    "bt_log_likelihood",
    "e_step",
    "fit_reward_mixture",
    "RewardModels",
    "fit_preference_models",
    "load_preferences",
    "text_features",
    "overlong_filter",
    "overlong_penalty",
    "shape_overlong",
    "SCORE_LEVELS",
    "parse_item_code",
    "rsvr_reward",
    "rsvr_scores",
]

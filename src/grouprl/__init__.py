"""grouprl: group-relative reinforcement learning for language models and LLM agents.

    from grouprl import Rollouts, compute_advantages, policy_loss
"""

from .core import Rollouts
from .advantages import compute_advantages
from .losses import policy_loss

__version__ = "0.1.0"

__all__ = ["Rollouts", "compute_advantages", "policy_loss", "__version__"]

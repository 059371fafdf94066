"""Floor 5: the embedded trainer — config, the RL loop, SFT warm start, checkpoints, logging, plots."""

from __future__ import annotations

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, build_config, load_config, parse_overrides
from .rundir import resume_config
from .run import train
from .sampler import UniformSampler, get_sampler
from .sft import sft

__all__ = [
    "TrainConfig",
    "ConfigError",
    "CheckpointError",
    "build_config",
    "load_config",
    "parse_overrides",
    "resume_config",
    "train",
    "sft",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "get_sampler",
    "UniformSampler",
]

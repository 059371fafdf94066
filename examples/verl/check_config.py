"""Compose examples/verl/grpo_ngrpo.yaml (and the overrides of run_grouprl_rloo.sh) with verl's own
config tree and call the registered grouprl estimator with the resulting ``algorithm`` section.

Needs hydra-core (verl's dependency, not installed by grouprl's test extra):
    python examples/verl/check_config.py
"""

from __future__ import annotations

import os

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from grouprl.integrations.verl import register_all
from verl.trainer.ppo import core_algos

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    register_all()
    with initialize_config_dir(config_dir=HERE, version_base=None):
        cfg = compose(config_name="grpo_ngrpo", overrides=["algorithm.adv_estimator=grouprl.grpo",
                                                          "~algorithm.grouprl.hparams.r_max",
                                                          "+algorithm.grouprl.hparams.eps=1e-4"])
    with initialize_config_dir(config_dir=os.path.dirname(core_algos.__file__) + "/../config", version_base=None):
        cli = compose(
            config_name="ppo_trainer",
            overrides=["algorithm.adv_estimator=grouprl.rloo", "+algorithm.grouprl.hparams.singleton=zero",
                       "actor_rollout_ref.actor.policy_loss.loss_mode=grouprl.ppo_clip"],
        )
    tlr = torch.zeros(4, 3)
    tlr[:, -1] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mask = torch.ones(4, 3)
    index = np.array(["a", "a", "b", "b"], dtype=object)
    for c in (cfg, cli):
        fn = core_algos.get_adv_estimator_fn(c.algorithm.adv_estimator)
        adv, _ = fn(token_level_rewards=tlr, response_mask=mask, index=index, config=c.algorithm)
        print(c.algorithm.adv_estimator, dict(c.algorithm.grouprl), c.actor_rollout_ref.actor.policy_loss.loss_mode,
              adv[:, -1].tolist())


if __name__ == "__main__":
    main()

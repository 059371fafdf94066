#!/usr/bin/env bash
# grouprl's RLOO advantage and PPO-clip loss inside verl 0.9.1, all on the command line.
# Run on the Ray head node after `ray start` on every node (each with the same environment).
set -euo pipefail

# Activate the plug-in in every process that imports verl (trainer and Ray workers).
export VERL_USE_EXTERNAL_MODULES=grouprl.integrations.verl_plugin
# Loss hyperparameters that verl's actor config has no field for (JSON, per loss or flat), e.g.
# INTELLECT-2's two-sided clip of grouprl's ppo_clip (unset = off):
export GROUPRL_VERL_LOSS_HPARAMS='{"ppo_clip": {"delta": 4.0}}'

python -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grouprl.rloo \
    +algorithm.grouprl.hparams.singleton=zero \
    actor_rollout_ref.actor.policy_loss.loss_mode=grouprl.ppo_clip \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.actor.clip_ratio_low=0.2 \
    actor_rollout_ref.actor.clip_ratio_high=0.28 \
    actor_rollout_ref.rollout.n=8 \
    trainer.nnodes="${NNODES:-1}" \
    trainer.n_gpus_per_node="${GPUS_PER_NODE:-8}" \
    "$@"   # data.train_files=... data.val_files=... actor_rollout_ref.model.path=... etc.

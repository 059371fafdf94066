"""Import side effect: activate grouprl inside verl.

``import grouprl.integrations.verl_plugin`` registers every grouprl estimator and policy loss with
verl under the ``grouprl.`` prefix and installs the pass-throughs
(DataProto fields to estimators, per-step inputs and the micro-batch to losses; see
``grouprl.integrations.verl``). It is meant for verl's own plug-in hooks, which run in every
process that imports verl (the trainer and each Ray worker):

* ``export VERL_USE_EXTERNAL_MODULES=grouprl.integrations.verl_plugin`` before ``ray start`` /
  ``python -m verl.trainer.main_ppo`` on every node, or
* an entry point in the ``verl.plugins`` group naming this module (loaded automatically by
  ``import verl`` unless ``VERL_USE_EXTERNAL_PLUGINS=none``).
"""

from __future__ import annotations

from .verl import install_field_passthrough, install_loss_passthrough, register_all

REGISTERED = register_all()
install_field_passthrough()
install_loss_passthrough()

__all__ = ["REGISTERED"]

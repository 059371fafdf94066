"""Floor 6: plug-ins that run grouprl's estimators and losses inside other training engines.

* ``grouprl.integrations.verl`` — registers every grouprl estimator and policy loss with verl's
  registries (``register_all()``); ``grouprl.integrations.verl_plugin`` does it on import (for
  ``VERL_USE_EXTERNAL_MODULES`` or the ``verl.plugins`` entry point).
* ``grouprl.integrations.trl`` — ``GroupRLGRPOTrainer``, a ``trl.GRPOTrainer`` whose advantages
  and loss come from grouprl.

Importing this package imports neither verl nor TRL: each submodule imports its engine when it is
itself imported. See ``docs/scaling.md``.
"""

from __future__ import annotations

__all__: list[str] = []

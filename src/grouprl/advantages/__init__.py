"""Floor 2: advantage estimators, one module per paper family, and their registry.

``compute_advantages(name, batch, **hparams)`` is the entry point; ``ESTIMATORS`` lists them;
``resolve(name_or_expression, **hparams)`` turns a name or an expression into an ``Estimator``.
"""

from .registry import (
    ESTIMATORS,
    TRANSFORMS,
    Estimator,
    EstimatorInfo,
    compute_advantages,
    estimator,
    get,
    group_diagnostics,
    parse,
    resolve,
    transform,
)


def _register_all() -> None:
    """Import every estimator module of this package (importing one registers its estimators)."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name != "registry":
            importlib.import_module(f"{__name__}.{mod.name}")


_register_all()

__all__ = [
    "ESTIMATORS",
    "TRANSFORMS",
    "Estimator",
    "EstimatorInfo",
    "compute_advantages",
    "estimator",
    "get",
    "group_diagnostics",
    "parse",
    "resolve",
    "transform",
]

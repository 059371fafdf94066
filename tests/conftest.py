import os

import torch

# Two cores are shared by the test workers: one torch thread each.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


# ------------------------------------------------------------------ optional packages
# CI installs every package of the `test` extra (verl, TRL, Ray, peft, gymnasium, reasoning-gym)
# and sets GROUPRL_REQUIRE_EXTRAS=1 (.ci/run): there a missing or broken one fails the run instead
# of turning its parity tests into silent skips. Elsewhere they skip as usual. (textarena is not in
# the test extra and keeps its plain skip.)
def _extras_required() -> bool:
    return os.environ.get("GROUPRL_REQUIRE_EXTRAS") == "1"


def require(modname: str):
    """``pytest.importorskip(modname)``, or a failure when GROUPRL_REQUIRE_EXTRAS=1."""
    import importlib

    import pytest

    if _extras_required():
        try:
            return importlib.import_module(modname)
        except ImportError as exc:
            pytest.fail(
                f"{modname} cannot be imported ({exc}) but GROUPRL_REQUIRE_EXTRAS=1 requires it: "
                "install the test extra (pip install -e '.[test]')",
                pytrace=False,
            )
    return pytest.importorskip(modname)


def needs(modname: str):
    """A skipif mark for a test that needs ``modname``; no skip when GROUPRL_REQUIRE_EXTRAS=1."""
    import importlib.util

    import pytest

    try:
        missing = importlib.util.find_spec(modname) is None
    except ImportError:
        missing = True
    return pytest.mark.skipif(missing and not _extras_required(), reason=f"{modname} is not installed")

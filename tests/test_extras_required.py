"""The optional-package helpers of conftest: a skip locally, a failure in CI (GROUPRL_REQUIRE_EXTRAS=1)."""

import pytest
from conftest import needs, require


def test_require_skips_without_the_flag(monkeypatch):
    monkeypatch.delenv("GROUPRL_REQUIRE_EXTRAS", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require("no_such_package_grouprl_xyz")
    assert require("json").__name__ == "json"


def test_require_fails_with_the_flag(monkeypatch):
    monkeypatch.setenv("GROUPRL_REQUIRE_EXTRAS", "1")
    with pytest.raises(pytest.fail.Exception, match="GROUPRL_REQUIRE_EXTRAS=1 requires it"):
        require("no_such_package_grouprl_xyz")


def test_needs_mark_skips_only_without_the_flag(monkeypatch):
    monkeypatch.delenv("GROUPRL_REQUIRE_EXTRAS", raising=False)
    assert needs("no_such_package_grouprl_xyz").args == (True,)
    assert needs("json").args == (False,)
    monkeypatch.setenv("GROUPRL_REQUIRE_EXTRAS", "1")
    assert needs("no_such_package_grouprl_xyz").args == (False,)  # runs, and fails on its import


def test_ci_sets_the_flag_before_pytest():
    import pathlib

    run = (pathlib.Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert run.index("export GROUPRL_REQUIRE_EXTRAS=1") < run.index("python -m pytest")

"""TrainConfig sections: nested YAML, flat and dotted overrides, old flat files, resume hash."""

from __future__ import annotations

import hashlib
import json

import pytest

from grouprl.train.config import RESUMABLE_FIELDS, build_config


def _old_hash(flat: dict) -> str:
    """compat_hash as computed before sections existed: sha256 of the flat field dict minus RESUMABLE_FIELDS."""
    d = {k: v for k, v in flat.items() if k not in RESUMABLE_FIELDS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Pinned on main at 47b7138, before sections: a checkpoint stores this hash and --resume compares it.
# (A new field with a default changes every hash, so runs written before it no longer resume.)
PINNED = [({}, "0889f6f8db88aeaf"), ({"method": "dapo"}, "1ec45768521d4148"), ({"env": "gridworld"}, "32152f4fceda2f82")]


@pytest.mark.parametrize("values,expected", PINNED)
def test_compat_hash_is_unchanged_for_the_same_values(values, expected):
    cfg = build_config(values)
    assert cfg.compat_hash() == expected
    assert _old_hash(cfg.model_dump()) == expected

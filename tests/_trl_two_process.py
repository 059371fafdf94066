"""Run under ``torchrun --nproc_per_node 2`` (CPU, gloo): TRL's GRPOTrainer and GroupRLGRPOTrainer
for two steps with groups that span both processes (2 rows per process, 4 per group); each rank
checks that its local advantages and the logged (gathered) advantages agree. Used by
tests/test_integration_trl.py::test_two_processes_groups_spanning_ranks."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)

import test_integration_trl as t  # noqa: E402


def main() -> None:
    out = sys.argv[1]
    from pathlib import Path

    ref = t.run(Path(out), t.RecTRL, batch=2)
    ours = t.run(Path(out), t.RecGroupRL, batch=2, estimator_hparams={"eps": 1e-4})
    rank = int(os.environ["RANK"])
    assert len(ref.rec) == len(ours.rec) == 2
    for a, b in zip(ref.rec, ours.rec):
        assert a["advantages"].shape == b["advantages"].shape == (2,), b["advantages"].shape
        torch.testing.assert_close(b["advantages"], a["advantages"], atol=1e-5, rtol=0)
        assert len(b["logged"]) == 4
        torch.testing.assert_close(torch.tensor(b["logged"]), torch.tensor(a["logged"]), atol=1e-5, rtol=0)
    nontrivial = any(float(torch.tensor(r["logged"]).abs().max()) > 0.1 for r in ref.rec)
    # a file per rank: the ranks' stdout streams interleave
    (Path(out) / f"rank{rank}.ok").write_text(f"OK rank {rank} nontrivial={nontrivial}")


if __name__ == "__main__":
    main()

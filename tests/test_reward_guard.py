from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import pytest
import torch

from grouprl.tasks import Example, RewardGuard, get_task

EX = [Example(f"{i}+0=", str(i), "g") for i in range(8)]


def user_fn(example, completion):
    if completion == "raise":
        raise RuntimeError("boom")
    if completion == "nan":
        return math.nan
    if completion == "inf":
        return -math.inf
    if completion == "none":
        return None
    if completion == "str":
        return "1.0"
    if completion == "hang":
        time.sleep(60)
    if completion == "exit":
        os._exit(3)
    if completion == "np":
        return np.float32(0.25)
    if completion == "tensor":
        return torch.tensor(0.75)
    return 1.0 if completion == example.answer else 0.0


@pytest.fixture
def guard():
    # 2 s per call: the quick calls finish far inside it on a loaded 2-core machine; "hang" sleeps 60 s
    g = RewardGuard(user_fn, timeout_s=2.0, failure_reward=-1.0)
    yield g
    g.close()


def test_failures_are_contained_counted_and_the_worker_recovers(guard, caplog):
    comps = ["0", "raise", "nan", "hang", "str", "5", "none", "inf"]
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="grouprl.tasks.guard"):
        rewards, failed = guard.score_batch(EX, comps)
    elapsed = time.monotonic() - t0
    assert rewards.dtype == torch.float32 and failed.dtype == torch.bool
    assert rewards.tolist() == [1.0, -1.0, -1.0, -1.0, -1.0, 1.0, -1.0, -1.0]
    assert failed.tolist() == [False, True, True, True, True, False, True, True]
    assert guard.failures == {"error": 3, "nan": 2, "timeout": 1} and guard.total_failures == 6
    # one timeout (not before its 2 s), then a fresh worker finishes the batch: the 60 s hang was cut
    # (the upper margin is wide so that load cannot flake it; it still fails if the hang is waited out)
    assert 2.0 <= elapsed < 30.0
    assert guard.restarts == 1
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 6  # max_logged=5 failures, then one "not logged" note
    assert "RuntimeError: boom" in msgs[0] and "timeout" in msgs[2] and "not logged" in msgs[-1]
    # the next batch runs normally on the restarted worker
    rewards, failed = guard.score_batch(EX[:3], ["0", "9", "np"])
    assert rewards.tolist() == [1.0, 0.0, 0.25] and not failed.any()
    assert guard.calls == 11
    state = guard.state_dict()
    g2 = RewardGuard(user_fn)
    g2.load_state_dict(state)
    assert g2.failures == guard.failures and g2.calls == 11


def test_worker_that_dies_is_replaced(guard):
    rewards, failed = guard.score_batch(EX[:4], ["0", "exit", "2", "tensor"])
    assert rewards.tolist() == [1.0, -1.0, 1.0, 0.75]
    assert failed.tolist() == [False, True, False, False]
    assert guard.failures["error"] == 1


def test_batch_timeout_caps_the_whole_batch():
    # One quick call, then five that would each take 60 s: the batch cap (3 s) cuts them all; no
    # per-call limit (60 s) fires. The quick call has 3 s of margin, the cap 27 s.
    def slow(example, completion):
        if completion != "quick":
            time.sleep(60)
        return 1.0

    with RewardGuard(slow, timeout_s=60.0, batch_timeout_s=3.0) as g:
        t0 = time.monotonic()
        rewards, failed = g.score_batch(EX[:6], ["quick"] + ["slow"] * 5)
        elapsed = time.monotonic() - t0
        assert 3.0 <= elapsed < 30.0
        assert failed.tolist() == [False, True, True, True, True, True]
        assert g.failures["timeout"] == 5


def test_trusted_runs_in_process_with_the_same_checks():
    pid = os.getpid()
    seen = []

    def fn(example, completion):
        seen.append(os.getpid())
        return user_fn(example, completion)

    g = RewardGuard(fn, trusted=True)
    rewards, failed = g.score_batch(EX[:4], ["0", "raise", "inf", "3"])
    assert rewards.tolist() == [1.0, 0.0, 0.0, 1.0] and failed.tolist() == [False, True, True, False]
    assert g.failures == {"error": 1, "nan": 1, "timeout": 0}
    assert set(seen) == {pid} and g._proc is None


def test_untrusted_runs_in_a_worker_and_accepts_closures():
    offset = 0.5  # a closure: fork needs no pickling of the function
    with RewardGuard(lambda e, c: os.getpid() * 0 + offset, timeout_s=1.0) as g:
        rewards, failed = g.score_batch(EX[:2], ["a", "b"])
        assert rewards.tolist() == [0.5, 0.5] and not failed.any()
        assert g._proc is not None and g._proc.pid != os.getpid()


def test_for_task_and_bad_input():
    task = get_task("add1")
    g = RewardGuard.for_task(task)
    assert g.trusted
    ex = task.eval_examples[:3]
    rewards, failed = g(ex, [ex[0].answer, "x", ex[2].answer + "\n"])
    assert rewards.tolist() == [1.0, 0.0, 1.0] and not failed.any()
    empty_r, empty_f = g([], [])
    assert empty_r.shape == (0,) and empty_f.shape == (0,)
    with pytest.raises(ValueError, match="one of each per row"):
        g(ex, ["1"])
    with pytest.raises(ValueError, match="timeout_s"):
        RewardGuard(user_fn, timeout_s=0)
    with pytest.raises(TypeError, match="callable"):
        RewardGuard(3)


def test_torch_inside_a_forked_worker_does_not_deadlock():
    # After the parent has used a multi-threaded OpenMP pool, a forked child that runs a torch op
    # with the inherited thread count hangs; the worker runs torch single-threaded instead.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = torch.randn(256, 256)
        (a @ a).sum()

        def fn(example, completion):
            x = torch.randn(128, 128)
            return float((x @ x).mean() * 0 + 1)

        with RewardGuard(fn, timeout_s=2.0) as g:
            rewards, failed = g.score_batch(EX[:2], ["a", "b"])
    finally:
        torch.set_num_threads(threads)
    assert rewards.tolist() == [1.0, 1.0] and not failed.any()

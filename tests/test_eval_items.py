"""Per-example evaluation scores: evaluate() returns them, the trainer writes eval_items.jsonl with
stable ids (the example's index in the task's held-out split), cut back on resume like eval.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grouprl.tasks import get_task
from grouprl.train import build_config, train
from grouprl.train.logging import read_jsonl
from grouprl.train.task_source import eval_item_ids, eval_subset
from test_train import tiny_overrides


def test_item_ids_are_indices_of_the_full_split_unique_in_a_mixed_task():
    task = get_task("mixed")
    for size in (None, 7, 40):
        subset, ids = eval_subset(task, size), eval_item_ids(task, size)
        assert len(ids) == len(subset) == len(set(ids))
        assert all(task.eval_examples[int(i)] is e for i, e in zip(ids, subset))
    # the same example keeps its id when eval_size changes: every id of the 7-subset that is also in
    # the 40-subset names the same prompt and group there
    small, big = dict(zip(eval_item_ids(task, 7), eval_subset(task, 7))), dict(zip(eval_item_ids(task, 40), eval_subset(task, 40)))
    assert all(big[i].prompt == e.prompt for i, e in small.items() if i in big)
    # and for another training seed (the held-out split never depends on it)
    other = get_task("mixed", seed=5)
    assert [other.eval_examples[int(i)].prompt for i in small] == [e.prompt for e in small.values()]


def test_trainer_writes_eval_items_and_resume_cuts_them_back(tmp_path):
    cfg = build_config(tiny_overrides(tmp_path, name="items", steps=3, eval_every=2, save_every=2, eval_size=8,
                                      keep_checkpoints=5))
    run = Path(train(cfg)["run_dir"])
    evals, items = read_jsonl(run / "eval.jsonl"), read_jsonl(run / "eval_items.jsonl")
    assert [r["step"] for r in items] == [r["step"] for r in evals] == [0, 2, 3]
    ids = eval_item_ids(get_task("mixed"), 8)
    for ev, it in zip(evals, items):
        assert "scores" not in ev  # the per-example list goes to eval_items.jsonl only
        assert list(it["items"]) == ids and set(it["items"].values()) <= {0.0, 1.0}
        assert sum(it["items"].values()) / len(ids) == pytest.approx(ev["acc"])  # mean of the items = acc
    # a line written after the last checkpoint (a kill between an evaluation and the next checkpoint)
    # is dropped on resume, as in eval.jsonl
    before = (run / "eval_items.jsonl").read_text()
    with open(run / "eval_items.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "items": {"0": 1.0}}) + "\n")
    train(cfg, resume=run)
    assert (run / "eval_items.jsonl").read_text() == before

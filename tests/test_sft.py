"""The SFT warm start: fixed step count, or until a validation accuracy target (never the eval split)."""

from __future__ import annotations

import json

import pytest

from grouprl.models import build_model, build_tokenizer
from grouprl.tasks import Example, Task
from grouprl.train.sft import sft, sft_summary


class ToyTask(Task):
    """A task whose verifier says yes to everything (``always``) or to nothing, and whose
    ``reference`` refuses the validation examples, so a test can see they are never trained on."""

    name = "toy"
    trusted = True

    def __init__(self, n: int, always: bool, val_size: int) -> None:
        self.always, self.val_prompts = always, {f"{i}+0=" for i in range(n - val_size, n)}
        self.train_pool = [Example(f"{i}+0=", str(i), "toy") for i in range(n)]
        self.eval_examples = [Example("1+1=", "2", "toy")]
        self.data_groups = ["toy"]

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if self.always else 0.0

    def reference(self, example: Example) -> str:
        if example.prompt in self.val_prompts:
            raise AssertionError(f"SFT asked for the answer of validation example {example.prompt!r}")
        return example.answer


def _model():
    tok = build_tokenizer("char")
    return build_model("tiny", tok, seed=0), tok


def test_target_reached_stops_at_the_first_check_and_records_val_acc():
    model, tok = _model()
    hist = sft(model, tok, ToyTask(60, always=True, val_size=20), steps=50, batch_size=4, lr=1e-3, warmup_steps=2,
               seed=0, target_acc=0.5, check_every=5, val_size=20, max_new_tokens=3)
    assert len(hist) == 5 and hist[-1]["val_acc"] == 1.0
    assert [r["lr"] for r in hist[2:]] == [1e-3] * 3  # constant after the warmup when a target is set
    assert sft_summary(hist) == f"5 steps, final loss {hist[-1]['loss']:.3f}, validation greedy acc 1.000"


def test_target_not_reached_runs_every_step_and_checks_on_schedule():
    model, tok = _model()
    hist = sft(model, tok, ToyTask(60, always=False, val_size=20), steps=12, batch_size=4, lr=1e-3, warmup_steps=0,
               seed=0, target_acc=0.5, check_every=5, val_size=20, max_new_tokens=3)
    assert len(hist) == 12
    assert [r["step"] for r in hist if "val_acc" in r] == [4, 9] and all(r["val_acc"] == 0.0 for r in hist if "val_acc" in r)


def test_without_target_a_fixed_count_with_cosine_decay():
    model, tok = _model()
    task = ToyTask(60, always=True, val_size=0)
    hist = sft(model, tok, task, steps=6, batch_size=4, lr=1e-3, warmup_steps=0, seed=0)
    assert len(hist) == 6 and "val_acc" not in json.dumps(hist)
    assert hist[0]["lr"] == pytest.approx(1e-3) and hist[-1]["lr"] < hist[0]["lr"]


def test_bad_target_and_small_pool_are_clear_errors():
    model, tok = _model()
    with pytest.raises(ValueError, match="target_acc=1.5"):
        sft(model, tok, ToyTask(60, True, 20), steps=2, batch_size=2, lr=1e-3, warmup_steps=0, seed=0, target_acc=1.5)
    with pytest.raises(ValueError, match="too small .*sft_val_size"):
        sft(model, tok, ToyTask(30, True, 20), steps=2, batch_size=2, lr=1e-3, warmup_steps=0, seed=0,
            target_acc=0.5, val_size=20)

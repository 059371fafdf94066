"""Device selection, bf16 autocast dtypes, early-stopping rollouts, LoRA and the GPU
check script's CPU paths (grouprl.train.device, benchmarks/gpu_check.*). CPU only."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require
import torch

from grouprl.models import build_model, build_tokenizer
from grouprl.rollout import response_logprobs, sample
from grouprl.train import build_config, train
from grouprl.train.device import (
    apply_lora,
    autocast,
    device_generator,
    resolve_device,
    resolve_precision,
    to_device,
)
from grouprl.train.logging import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- device and precision selection
def test_auto_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="choose one of"):
        resolve_device("tpu")


def test_precision_auto_and_explicit(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda) == "fp32"
    with pytest.raises(ValueError, match="does not support bf16"):
        resolve_precision("bf16", cuda)
    with pytest.raises(ValueError, match="precision="):
        resolve_precision("fp16", cpu)


def test_config_fields_validate():
    assert build_config({"device": "cuda:0"}).device == "cuda:0"
    with pytest.raises(ValueError, match="device"):
        build_config({"device": "gpu"})
    with pytest.raises(ValueError, match="old_logprobs=recompute"):
        build_config({"rollout_is": "token", "old_logprobs": "sampling"})


def test_generator_kept_on_cpu_and_moved_for_cuda():
    g = torch.Generator().manual_seed(7)
    assert device_generator(g, torch.device("cpu")) is g  # CPU stream untouched


def test_generator_for_cuda_is_seeded_from_the_step_generator(monkeypatch):
    """The CUDA branch, with torch.Generator stubbed (no GPU here): device and seed are passed on."""
    import grouprl.train.device as dev

    made = []

    class FakeGen:
        def __init__(self, device):
            made.append(device)

        def manual_seed(self, seed):
            made.append(seed)
            return self

    monkeypatch.setattr(dev.torch, "Generator", FakeGen)
    out = dev.device_generator(torch._C.Generator().manual_seed(11), torch.device("cuda"))
    assert isinstance(out, FakeGen) and made == [torch.device("cuda"), 11]

def test_to_device_keeps_cpu_tensors():
    t = torch.ones(3)
    assert to_device(t, torch.device("cpu")) is t


def _tiny():
    tok = build_tokenizer("char")
    return build_model("tiny", tok, seed=0), tok


def test_cpu_sampling_deterministic_with_step_generators():
    model, tok = _tiny()
    prompts = [tok.encode("12+3=")]
    outs = [sample(model, prompts, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=5,
                   num_samples=6, generator=device_generator(torch.Generator().manual_seed(3), torch.device("cpu")))
            for _ in range(2)]
    assert torch.equal(outs[0].response_ids, outs[1].response_ids)
    assert torch.equal(outs[0].logprobs, outs[1].logprobs)


# ---------------------------------------------------------------- bf16 dtype handling
def test_bf16_step_keeps_fp32_master_weights_and_fp32_loss():
    from grouprl.losses import normalizers, policy_loss

    torch.manual_seed(0)
    model, tok = _tiny()
    cpu = torch.device("cpu")
    gen = sample(model, [tok.encode("1+2="), tok.encode("3+4=")], eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                 max_new_tokens=4, num_samples=2, generator=torch.Generator().manual_seed(0))
    seen = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with autocast(cpu, "bf16"):
        lp, _ = response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the matmuls ran in bf16 (shared prompt forward: two calls)
    assert lp.dtype == torch.float32  # log-probs leave the region in fp32
    adv = torch.randn(lp.shape[0], 1).expand_as(lp) * gen.response_mask
    loss, _ = policy_loss("ppo_clip", lp, lp.detach(), adv, gen.response_mask, **normalizers(gen.response_mask))
    assert loss.dtype == torch.float32
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    torch.optim.AdamW(model.parameters(), lr=1e-2).step()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    with autocast(cpu, "fp32"):  # fp32 is a no-op region
        lp32, _ = response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask)
    assert lp32.dtype == torch.float32


def _cfg(tmp_path, **kw):
    d = dict(out_dir=str(tmp_path / "runs"), model="tiny", task="add2", sft_steps=0, steps=2, prompts_per_step=3,
             group_size=3, max_new_tokens=4, eval_every=0, eval_size=4, pass_k=2, pass_k_size=0, save_every=2,
             threads=1, progress=False, tensorboard=False, micro_batch_size=4, lr=1e-3, device="cpu")
    d.update(kw)
    return build_config(d)


def test_train_bf16_with_token_rollout_is(tmp_path):
    s = train(_cfg(tmp_path, name="bf16", precision="bf16", rollout_is="token", rollout_is_cap=2.0))
    rows = read_jsonl(Path(s["run_dir"]) / "metrics.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert math.isfinite(r["loss"])
        assert 0 < r["rollout_is/mean"] <= 2.0
        # bf16 recompute vs the sampler: the mismatch is measured (non-negative, finite)
        assert math.isfinite(r["rollout_is/abs_log_ratio"]) and r["rollout_is/abs_log_ratio"] >= 0


def test_train_default_cpu_unchanged_by_device_module(tmp_path):
    """device=auto/precision=auto on a CPU machine is the fp32 CPU path: same metrics as device=cpu."""
    a = train(_cfg(tmp_path, name="a", device="auto", precision="auto"))
    b = train(_cfg(tmp_path, name="b", device="cpu", precision="fp32"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]  # noqa: E731
    if torch.cuda.is_available():  # pragma: no cover - CPU-only CI
        pytest.skip("auto picks CUDA here")
    assert strip(read_jsonl(Path(a["run_dir"]) / "metrics.jsonl")) == strip(read_jsonl(Path(b["run_dir"]) / "metrics.jsonl"))


# ---------------------------------------------------------------- rollout: finished rows stop early
def test_sampler_drops_finished_rows_from_the_batch():
    model, tok = _tiny()
    eos = tok.eos_token_id
    calls = {"n": 0}

    def half_stop(logits):  # first decode step: first half of the rows emit EOS, the rest never do
        out = logits.clone()
        if calls["n"] == 0:
            half = out.shape[0] // 2
            out[:half] = -1e9
            out[:half, eos] = 0.0
            out[half:, eos] = -1e9
        else:
            out[:, eos] = -1e9
        calls["n"] += 1
        return out

    sizes = []
    hook = model.register_forward_hook(lambda m, i, kw, o: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True)
    gen = sample(model, [tok.encode("1+1=")] * 4, eos_id=eos, pad_id=tok.pad_token_id, max_new_tokens=5,
                 num_samples=2, generator=torch.Generator().manual_seed(0), logits_processor=half_stop)
    hook.remove()
    assert sizes == [4, 4, 4, 4, 4]  # prefill once per prompt (4 rows, not 8), then only the 4 unfinished rows
    assert gen.lengths.tolist() == [1] * 4 + [5] * 4
    assert gen.truncated.tolist() == [False] * 4 + [True] * 4


# ---------------------------------------------------------------- LoRA
def test_lora_trains_only_adapters(tmp_path):
    require("peft")
    model, _tok = _tiny()
    wrapped = apply_lora(model, rank=4, alpha=8, target_modules=["q_proj", "v_proj"])
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert apply_lora(model, rank=0, alpha=8, target_modules=["q_proj"]) is model
    s = train(_cfg(tmp_path, name="lora", lora_rank=4, lora_alpha=8, lr=1e-2, steps=1, save_every=1,
                   reward_fn="test_train:digit_fraction"))
    assert_adapters_trained_base_frozen(Path(s["run_dir"]) / "checkpoints" / "step_000001")


def assert_adapters_trained_base_frozen(ckpt_dir: Path) -> None:
    """A LoRA run's checkpoint of the seed-0 ``tiny`` model: some lora_B moved off 0, q_proj's base did not."""
    from safetensors.torch import load_file

    ck = load_file(str(ckpt_dir / "model.safetensors"))
    lora_b = [k for k in ck if "lora_B" in k]
    assert lora_b and any(ck[k].abs().sum() > 0 for k in lora_b)  # B starts at 0: the adapters were trained
    base = build_model("tiny", build_tokenizer("char"), seed=0).state_dict()
    q = next(k for k in ck if k.endswith("q_proj.base_layer.weight"))
    layer = q.split("layers.")[1].split(".")[0]
    assert torch.equal(ck[q], base[f"model.layers.{layer}.self_attn.q_proj.weight"])  # base frozen


# ---------------------------------------------------------------- the GPU check's CPU paths
def test_gpu_check_sh_fails_fast_without_cuda(tmp_path):
    if torch.cuda.is_available():  # pragma: no cover
        pytest.skip("a GPU is present")
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "no CUDA GPU" in r.stderr
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr


def test_gpu_check_py_runs_small_on_cpu(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    out = tmp_path / "out"
    report = gpu_check.main([str(out), "--device", "cpu", "--small"])
    saved = json.loads((out / "gpu_check.json").read_text())
    assert saved["estimators"] == report["estimators"]
    names = {r["name"] for r in saved["estimators"]}
    assert {"memory floor", "grpo", "rloo", "gae", "gigpo", "mars"} <= names
    floor = next(r for r in saved["estimators"] if r["name"] == "memory floor")
    assert floor["x_floor"] == 1.0
    assert all(r["ms"] > 0 for r in saved["estimators"] if not r["name"].startswith("verl"))
    tr = saved["train"]
    assert tr["steps"] == 2 and tr["rollout_tok_s"] > 0 and tr["update_tok_s"] > 0
    assert tr["precision"] == "bf16"

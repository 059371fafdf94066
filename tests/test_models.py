from __future__ import annotations

import json
import os

import pytest
import torch

from grouprl.models import (
    CHARS,
    PRESETS,
    build_model,
    build_tokenizer,
    check_checkpoint_dir,
    count_parameters,
    load_pretrained,
    save_pretrained,
)
from grouprl.models import checkpoint as ckpt_mod


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("char")


@pytest.fixture(scope="module")
def tiny(tok):
    return build_model("1M", tok, seed=0)


def test_char_tokenizer_round_trips_every_printable_char(tok):
    assert len(CHARS) == 96 and len(tok) == 100
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    ids = tok(CHARS, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(CHARS) and len(set(ids)) == len(CHARS) and min(ids) == 4
    assert tok.decode(ids) == CHARS
    # each character alone, with the bos the tokenizer prepends by default
    for c in CHARS:
        ids = tok(c)["input_ids"]
        assert ids[0] == tok.bos_token_id and len(ids) == 2
        assert tok.decode(ids, skip_special_tokens=True) == c
    text = "12+345=357\n  x~"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_char_tokenizer_unknown_char_and_padding_side():
    left = build_tokenizer()
    assert left("a\tb", add_special_tokens=False)["input_ids"][1] == left.unk_token_id
    enc = left(["1+1=", "12+34="], padding=True, return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == left.pad_token_id and enc["attention_mask"][0, :2].sum() == 0
    right = build_tokenizer(padding_side="right")
    enc = right(["1+1=", "12+34="], padding=True, return_tensors="pt")
    assert enc["input_ids"][0, -1].item() == right.pad_token_id
    with pytest.raises(ValueError, match="padding_side"):
        build_tokenizer(padding_side="middle")
    assert build_tokenizer(add_bos=False)("12")["input_ids"] == left("12", add_special_tokens=False)["input_ids"]


def test_bpe_tokenizer_is_deterministic_and_round_trips():
    texts = [f"{a}+{b}={a + b}" for a in range(40) for b in range(40)] + ["the cat sat on the mat"] * 20
    a = build_tokenizer("bpe", texts=texts, vocab_size=140)
    b = build_tokenizer("bpe", texts=texts, vocab_size=140)
    assert a.get_vocab() == b.get_vocab()
    assert 100 < len(a) <= 140 and a.pad_token_id == 0 and a.eos_token_id == 2
    assert "the" in a.tokenize("the cat")[0] or " cat" in a.tokenize("the cat")
    s = "the cat: 12+7=19\n" + CHARS
    assert a.decode(a(s)["input_ids"], skip_special_tokens=True) == s
    with pytest.raises(ValueError, match="texts"):
        build_tokenizer("bpe")
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer("bpe", texts=texts, vocab_size=50)
    with pytest.raises(ValueError, match="kind"):
        build_tokenizer("word")


# Measured parameter counts with the char tokenizer (100 tokens), tied embeddings counted once.
EXPECTED = {
    ("tiny", "qwen2"): 21_920,
    ("tiny", "llama"): 21_792,
    ("1M", "qwen2"): 998_016,
    ("1M", "llama"): 996_992,
    ("5M", "qwen2"): 5_045_504,
    ("5M", "llama"): 5_042_432,
    ("20M", "qwen2"): 20_699_520,
}


@pytest.mark.parametrize("preset,arch", sorted(EXPECTED))
def test_presets_build_with_expected_sizes(tok, preset, arch):
    model = build_model(preset, tok, arch=arch)
    n = count_parameters(model)
    assert n == EXPECTED[preset, arch]
    nominal = 2e4 if preset == "tiny" else float(preset[:-1]) * 1e6
    assert 0.8 * nominal < n < 1.2 * nominal
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.vocab_size == len(tok) and model.config.pad_token_id == tok.pad_token_id
    assert model.config.eos_token_id == tok.eos_token_id == model.generation_config.eos_token_id
    assert model.config.model_type == arch and model.dtype == torch.float32
    assert PRESETS[preset]["tie_word_embeddings"] is True


def test_save_load_is_quiet(tok, tiny, tmp_path, capsys):
    save_pretrained(tiny, tok, tmp_path / "q")
    load_pretrained(tmp_path / "q")
    out = capsys.readouterr()
    assert "Loading weights" not in out.err + out.out and "Writing" not in out.err + out.out


def test_100m_preset_config_only(tok):
    # Building the 100M model takes seconds; check its config arithmetic instead.
    from grouprl.models import model_config

    cfg = model_config("100M", tok)
    h, L, I = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    kv = cfg.num_key_value_heads * h // cfg.num_attention_heads
    per_layer = 2 * h * h + 2 * h * kv + 2 * kv + h + 3 * h * I + 2 * h  # qwen2: q/k/v biases
    assert L * per_layer + 100 * h + h == 96_842_496


def test_build_model_is_seeded_and_leaves_global_rng(tok):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("1M", tok, seed=7)
    after = torch.rand(1)
    b = build_model("1M", tok, seed=7)
    c = build_model("1M", tok, seed=8)
    assert torch.equal(before, after)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    with pytest.raises(KeyError, match="did you mean '5M'"):
        build_model("5m", tok)
    assert build_model("1M", tok, num_hidden_layers=1).config.num_hidden_layers == 1
    assert build_model("tiny", tok, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="arch"):
        build_model("tiny", tok, arch="gpt2")


def test_left_padding_gives_the_same_logits_as_no_padding(tok, tiny):
    enc = tok(["7+8=", "123+456="], padding=True, return_tensors="pt")
    with torch.no_grad():
        batched = tiny(**enc).logits
        alone = tiny(**tok(["7+8="], return_tensors="pt")).logits
    n = alone.shape[1]
    torch.testing.assert_close(batched[0, -n:], alone[0], atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_identical_logits(tok, tiny, tmp_path):
    path = save_pretrained(tiny, tok, tmp_path / "ckpt")
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    model, tok2 = load_pretrained(path)
    assert tok2.get_vocab() == tok.get_vocab() and tok2.padding_side == "left"
    assert (tok2.pad_token_id, tok2.bos_token_id, tok2.eos_token_id) == (0, 1, 2)
    assert tok2.decode(tok2(CHARS)["input_ids"], skip_special_tokens=True) == CHARS
    enc = tok(["12+3=", "99*9="], padding=True, return_tensors="pt")
    enc2 = tok2(["12+3=", "99*9="], padding=True, return_tensors="pt")
    assert torch.equal(enc["input_ids"], enc2["input_ids"])
    with torch.no_grad():
        assert torch.equal(tiny(**enc).logits, model(**enc2).logits)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp dirs left behind


def test_llama_round_trip(tok, tmp_path):
    m = build_model("1M", tok, arch="llama", seed=3)
    save_pretrained(m, tok, tmp_path / "l")
    m2, _ = load_pretrained(tmp_path / "l")
    x = tok(["5*5="], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(m(**x).logits, m2(**x).logits)
    assert m2.config.model_type == "llama"


def test_atomic_save_keeps_existing_checkpoint_on_failure(tok, tiny, tmp_path, monkeypatch):
    path = save_pretrained(tiny, tok, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    other = build_model("1M", tok, seed=1)

    def broken(self, *a, **k):  # the tokenizer write fails after the weights were written
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(type(tok), "save_pretrained", broken)
    with pytest.raises(OSError, match="simulated"):
        save_pretrained(other, tok, path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]

    # a failing final rename puts the old checkpoint back
    real_replace = os.replace
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("rename failed (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", flaky)
    with pytest.raises(OSError, match="rename failed"):
        save_pretrained(other, tok, path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]

    # and a successful save replaces it
    save_pretrained(other, tok, path)
    assert (path / "model.safetensors").read_bytes() != before["model.safetensors"]


def test_save_refuses_to_replace_a_file(tok, tiny, tmp_path):
    (tmp_path / "f").write_text("keep me")
    with pytest.raises(ValueError, match="is a file"):
        save_pretrained(tiny, tok, tmp_path / "f")
    assert (tmp_path / "f").read_text() == "keep me"


def test_load_of_incomplete_dir_names_missing_files(tok, tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json.*weights.*tokenizer"):
        load_pretrained(empty)
    path = save_pretrained(tiny, tok, tmp_path / "ckpt")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing weights") as err:
        load_pretrained(path)
    assert "config.json" in str(err.value)  # lists what the directory holds
    with pytest.raises(FileNotFoundError, match="missing weights"):
        check_checkpoint_dir(path, tokenizer=False)
    (path / "tokenizer.json").unlink()
    (path / "tokenizer_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing weights.*tokenizer files"):
        load_pretrained(path)


def test_load_dtype_and_padding_side_overrides(tok, tiny, tmp_path):
    path = save_pretrained(tiny, tok, tmp_path / "ckpt")
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] in ("TokenizersBackend", "PreTrainedTokenizerFast")
    model, tok2 = load_pretrained(path, dtype=torch.bfloat16, padding_side="right")
    assert model.dtype == torch.bfloat16 and tok2.padding_side == "right"

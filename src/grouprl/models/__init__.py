"""TEMPORARY SHIM (not committed): replaced by branch models-tasks."""
from __future__ import annotations
import os, shutil, tempfile
import torch
from tokenizers import Tokenizer, Regex, models as tm, pre_tokenizers, decoders
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, AutoModelForCausalLM

CHARS = list("0123456789+-*=?., abcdefghijklmnopqrstuvwxyz")
PRESETS = {"1M": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512),
           "5M": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4, intermediate_size=768),
           "tiny": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)}

def build_tokenizer(kind="char"):
    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + CHARS)}
    tok = Tokenizer(tm.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")

def build_model(preset, tokenizer, *, arch="qwen2", seed=0):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=64, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **PRESETS[preset])
    return Qwen2ForCausalLM(cfg)

def save_pretrained(model, tok, path):
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(path)) or ".")
    model.save_pretrained(tmp); tok.save_pretrained(tmp)
    if os.path.exists(path): shutil.rmtree(path)
    os.replace(tmp, path)

def load_pretrained(path):
    return AutoModelForCausalLM.from_pretrained(path), PreTrainedTokenizerFast.from_pretrained(path)

"""Floor 4: small causal LMs from a preset, offline tokenizers, local Hugging Face checkpoints, the
value model (critic) of critic-based PPO.

    from grouprl.models import build_tokenizer, build_model, save_pretrained, load_pretrained

    tok = build_tokenizer("char")
    model = build_model("1M", tok, seed=0)
    save_pretrained(model, tok, "runs/ckpt")
    model, tok = load_pretrained("runs/ckpt")
"""

from __future__ import annotations

from .checkpoint import check_checkpoint_dir, load_pretrained, save_pretrained
from .presets import ARCHS, PRESETS, build_model, count_parameters, model_config
from .tokenizer import CHARS, SPECIAL_TOKENS, build_tokenizer
from .value import ValueModel

__all__ = [
    "ARCHS",
    "CHARS",
    "PRESETS",
    "SPECIAL_TOKENS",
    "ValueModel",
    "build_model",
    "build_tokenizer",
    "check_checkpoint_dir",
    "count_parameters",
    "load_pretrained",
    "model_config",
    "save_pretrained",
]

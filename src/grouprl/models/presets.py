"""Small decoder-only language models built from a named size preset (no download).

The presets are Hugging Face config keyword arguments shared by the Qwen2 and Llama decoders
(grouped-query attention, RoPE, RMSNorm, SwiGLU MLP, tied input/output embeddings). The vocabulary
size and the special-token ids come from the tokenizer passed to :func:`build_model`.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["PRESETS", "ARCHS", "model_config", "build_model", "count_parameters"]

#: Named sizes -> decoder config kwargs. The name is the rough parameter count with the char
#: tokenizer (100 tokens); the measured counts are in tests/test_models.py (qwen2 / llama):
#: tiny 21,920 / 21,792; 1M 998,016 / 996,992; 5M 5,045,504 / 5,042,432;
#: 20M 20,699,520 / 20,691,840; 100M 96,842,496 / 96,827,136.
PRESETS: dict[str, dict] = {
    # For tests and smoke runs: seconds to build and to train a step.
    "tiny": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, max_position_embeddings=256,
    ),
    "1M": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=512, max_position_embeddings=256,
    ),
    "5M": dict(
        hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
        intermediate_size=832, max_position_embeddings=512,
    ),
    "20M": dict(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=1152, max_position_embeddings=512,
    ),
    # For GPU users; on a CPU it trains, slowly.
    "100M": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
        intermediate_size=2816, max_position_embeddings=1024,
    ),
}

_COMMON = dict(tie_word_embeddings=True, rms_norm_eps=1e-6, initializer_range=0.02, use_cache=True)
for _size in PRESETS.values():
    _size.update(_COMMON)

#: Supported architectures -> Hugging Face model_type.
ARCHS: dict[str, str] = {"qwen2": "qwen2", "llama": "llama"}


def model_config(preset: str | dict, tokenizer: PreTrainedTokenizerBase, *, arch: str = "qwen2", **overrides):
    """The transformers config for ``preset`` (a name in :data:`PRESETS` or a kwargs dict)."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            from ..core.registry import UnknownName, suggest

            raise UnknownName(f"unknown model preset {preset!r}: {suggest(preset, PRESETS)}")
        kwargs = dict(PRESETS[preset])
    else:
        kwargs = dict(preset)
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r}: choose one of {sorted(ARCHS)}.")
    for name in ("pad_token_id", "eos_token_id"):
        if getattr(tokenizer, name) is None:
            raise ValueError(f"tokenizer has no {name}; build it with grouprl.models.build_tokenizer or set one.")
    kwargs = {**_COMMON, **kwargs, **overrides}  # a user dict gets the common keys too
    kwargs.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return AutoConfig.for_model(ARCHS[arch], **kwargs)


def build_model(
    preset: str | dict,
    tokenizer: PreTrainedTokenizerBase,
    *,
    arch: str = "qwen2",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    **overrides,
) -> PreTrainedModel:
    """A freshly initialised causal LM of size ``preset`` for ``tokenizer``'s vocabulary.

    Initialisation is seeded with ``seed`` inside a forked RNG, so the global torch RNG is left
    untouched and the same arguments give the same weights. ``overrides`` replace preset keys
    (e.g. ``num_hidden_layers=2``).
    """
    config = model_config(preset, tokenizer, arch=arch, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = (
        tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
    )
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())

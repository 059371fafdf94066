"""Offline, deterministic tokenizers built with the `tokenizers` library.

``build_tokenizer("char")`` needs no data: one token per printable ASCII character plus the
newline, after four special tokens. ``build_tokenizer("bpe", texts=...)`` trains a small
byte-pair-encoding vocabulary on the given texts, starting from the same character alphabet.
Both come back as a :class:`transformers.PreTrainedTokenizerFast`, so they save and load like any
Hugging Face tokenizer.
"""

from __future__ import annotations

import string
from typing import Iterable, Literal

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["CHARS", "SPECIAL_TOKENS", "build_tokenizer"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
#: The special tokens, in id order: <pad>=0, <bos>=1, <eos>=2, <unk>=3.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
#: The character alphabet: printable ASCII (space through '~') and the newline, in code-point order.
CHARS: str = "\n" + "".join(chr(c) for c in range(32, 127))

assert set(CHARS) == set(string.printable) - set("\t\r\x0b\x0c")


def _wrap(tok: Tokenizer, add_bos: bool, padding_side: str) -> PreTrainedTokenizerFast:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}: use 'left' (generation) or 'right' (training).")
    bos_id = tok.token_to_id(BOS)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
    )


def _char_tokenizer() -> Tokenizer:
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for c in CHARS:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character (the newline included) is its own piece; decoding concatenates pieces.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def _bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    if vocab_size < len(SPECIAL_TOKENS) + len(CHARS):
        raise ValueError(
            f"vocab_size={vocab_size} is below the {len(SPECIAL_TOKENS) + len(CHARS)} special tokens and "
            "characters every BPE vocabulary starts from; raise vocab_size."
        )
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\d|\n| ?[^\s\d]+| +"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list(CHARS),
        limit_alphabet=len(CHARS),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def build_tokenizer(
    kind: Literal["char", "bpe"] = "char",
    *,
    texts: Iterable[str] | None = None,
    vocab_size: int = 512,
    padding_side: str = "left",
    add_bos: bool = True,
) -> PreTrainedTokenizerFast:
    """Build a tokenizer offline, the same every time.

    Args:
        kind: ``"char"`` (one token per character of :data:`CHARS`, 4 + 96 = 100 tokens) or
            ``"bpe"`` (trained on ``texts``, up to ``vocab_size`` tokens; digits stay single tokens
            so numbers keep a per-digit spelling).
        texts: training texts for ``"bpe"``.
        vocab_size: the BPE vocabulary size (ignored for ``"char"``).
        padding_side: ``"left"`` (default, for batched generation) or ``"right"``.
        add_bos: prepend ``<bos>`` when encoding with ``add_special_tokens=True`` (the default of
            ``tokenizer(text)``); encode completions with ``add_special_tokens=False``.

    Ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3 (characters outside the alphabet, such as
    a tab, encode to ``<unk>``). The tokenizer never appends ``<eos>``: the trainer appends
    ``tokenizer.eos_token_id`` to reference completions itself.
    """
    if kind == "char":
        tok = _char_tokenizer()
    elif kind == "bpe":
        if texts is None:
            raise ValueError("build_tokenizer('bpe') needs texts=[...] to train on; or use kind='char'.")
        tok = _bpe_tokenizer(texts, vocab_size)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}: choose 'char' or 'bpe'.")
    return _wrap(tok, add_bos, padding_side)

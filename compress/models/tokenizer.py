"""A whole-word CLIP tokenizer written from a small vocabulary (no download)."""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def build_word_tokenizer(words: Iterable[str], max_length: int = 16) -> CLIPTokenizer:
    """Return a CLIPTokenizer whose vocabulary holds every letter and every given word whole.

    CLIP's BPE only yields a whole word if the merges build it; merges for each word are appended
    after those already present (lowest priority), so earlier words keep their own merge paths.
    """
    from transformers import CLIPTokenizer

    letters = string.ascii_lowercase + string.digits
    vocab: dict[str, int] = {}
    for tok in [*letters, *(c + "</w>" for c in letters), *SPECIAL]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    words = sorted({w.lower() for w in words})
    bad = [w for w in words if not w or any(c not in letters for c in w)]
    if bad:
        raise ValueError(f"words must be lowercase letters or digits only, got {bad}")

    def make() -> CLIPTokenizer:
        return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length)

    for word in words:
        pieces = make().tokenize(word)
        while len(pieces) > 1:
            a, b = pieces[0], pieces[1]
            merges.append((a, b))
            vocab.setdefault(a + b, len(vocab))
            pieces = [a + b, *pieces[2:]]
    tok = make()
    split = [w for w in words if len(tok.tokenize(w)) != 1]
    if split:
        raise RuntimeError(f"tokenizer could not keep these words whole: {split}")
    return tok


def build_t5_tokenizer(words: Iterable[str], max_length: int = 16) -> Any:
    """A T5Tokenizer (SentencePiece Unigram) holding every given word as one piece `▁word`.

    Letters and digits are pieces too, scored lower, so any other word still tokenizes.
    """
    from transformers import T5Tokenizer

    words = _check_words(words)
    letters = string.ascii_lowercase + string.digits
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -5.0) for c in letters] + [(f"▁{w}", -1.0) for w in words]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def build_gemma_tokenizer(words: Iterable[str], max_length: int = 16) -> Any:
    """A GemmaTokenizer (byte-level BPE) whose merges build every given word whole, with and
    without its leading `▁` (the first word of a prompt has none)."""
    from transformers import GemmaTokenizer

    words = _check_words(words)
    letters = string.ascii_lowercase + string.digits
    vocab: dict[str, int] = {}
    for tok in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "▁", *letters):
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    # `▁` forms first: their merges then outrank the bare forms' inside `▁word`
    for form in [f"▁{w}" for w in words] + words:
        pieces = _bpe(vocab, merges, form)
        while len(pieces) > 1:
            a, b = pieces[0], pieces[1]
            merges.append((a, b))
            vocab.setdefault(a + b, len(vocab))
            pieces = [a + b, *pieces[2:]]
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _bpe(vocab: dict[str, int], merges: list[tuple[str, str]], text: str) -> list[str]:
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    return Tokenizer(BPE(vocab=dict(vocab), merges=list(merges))).encode(text).tokens


def _check_words(words: Iterable[str]) -> list[str]:
    out = sorted({w.lower() for w in words})
    letters = string.ascii_lowercase + string.digits
    bad = [w for w in out if not w or any(c not in letters for c in w)]
    if bad:
        raise ValueError(f"words must be lowercase letters or digits only, got {bad}")
    return out

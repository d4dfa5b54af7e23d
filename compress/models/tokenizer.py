"""A whole-word CLIP tokenizer written from a small vocabulary (no download)."""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import TYPE_CHECKING

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

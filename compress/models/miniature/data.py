"""Composed digits: scikit-learn's 8x8 digits coloured and sized on a 32x32 canvas, with prompts.

Each image has four attributes: the digit, its ink colour, the background colour and its size.
The 8x8 glyph is upscaled to 20x20 (small) or 28x28 (large) and centred on a 32x32 canvas: a
3-stage VAE (4x8x8 latents, 4 px per latent cell) keeps the strokes of both, and the UNet still
trains on 2 CPU cores. Size rather than position is the third attribute because a UNet's
convolutions and attention carry no absolute position, so "top left" is learnt only from
padding effects: too slowly for a 15-minute training budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 32
SIZES: dict[str, int] = {"small": 20, "large": 28}  # glyph side in pixels
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.7, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
}
# attribute -> its values, in the order of the judge's class indices
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "digit": DIGITS,
    "ink": tuple(COLOURS),
    "background": tuple(COLOURS),
    "size": tuple(SIZES),
}
_FILLERS = ("a", "the", "handwritten", "digit", "number", "on", "background")
WORDS = sorted({*_FILLERS, *DIGITS, *COLOURS, *SIZES})
MAX_TOKENS = 12  # the longest prompt is 9 words, plus start and end tokens
VAL_FRACTION = 0.2
SPLIT_SEED = 0


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """8x8 glyphs in [0, 1] (N, 8, 8) and their digit labels for split 'train' or 'val'."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "val"):
        raise CompressError(f"split must be 'train' or 'val', got {split!r}")
    d = load_digits()
    idx = np.arange(len(d.target))
    tr, va = train_test_split(
        idx, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=d.target
    )
    keep = np.sort(tr if split == "train" else va)
    return (d.images[keep] / 16.0).astype(np.float32), d.target[keep].astype(np.int64)


def sample_attributes(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    """(N, 4) class indices [digit, ink, background, size]; ink and background differ."""
    n = len(digits)
    ink = rng.integers(0, len(COLOURS), n)
    bg = (ink + rng.integers(1, len(COLOURS), n)) % len(COLOURS)  # uniform over the others
    size = rng.integers(0, len(SIZES), n)
    return np.stack([digits, ink, bg, size], axis=1).astype(np.int64)


def compose(glyphs: np.ndarray | torch.Tensor, attrs: np.ndarray) -> torch.Tensor:
    """Render (N, 8, 8) glyphs with (N, 4) attributes into (N, 3, 32, 32) images in [0, 1]."""
    import torch
    import torch.nn.functional as F

    g = torch.as_tensor(glyphs, dtype=torch.float32)[:, None]  # (N, 1, 8, 8)
    palette = torch.tensor(list(COLOURS.values()))  # (6, 3)
    at = torch.as_tensor(attrs)
    ink = palette[at[:, 1]][:, :, None, None]  # (N, 3, 1, 1)
    bg = palette[at[:, 2]][:, :, None, None]
    alpha = torch.zeros(len(at), 1, IMAGE_SIZE, IMAGE_SIZE)
    for k, side in enumerate(SIZES.values()):
        rows = (at[:, 3] == k).nonzero().flatten()
        if len(rows):
            o = (IMAGE_SIZE - side) // 2  # centred
            a = F.interpolate(g[rows], size=(side, side), mode="bilinear", align_corners=False)
            alpha[rows, :, o : o + side, o : o + side] = a
    return (bg * (1 - alpha) + ink * alpha).clamp(0, 1)


def heldout(n_per_glyph: int = 4, seed: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    """The fixed held-out real set: every validation glyph composed `n_per_glyph` times."""
    glyphs, digits = load_split("val")
    glyphs, digits = np.repeat(glyphs, n_per_glyph, 0), np.repeat(digits, n_per_glyph)
    attrs = sample_attributes(np.random.default_rng(seed), digits)
    return compose(glyphs, attrs), attrs


def make_prompt(attrs: dict[str, str], variant: int = 0) -> str:
    """A prompt naming exactly the given attributes; `variant` picks among phrasings."""
    digit = attrs.get("digit")
    adj = " ".join(attrs[k] for k in ("size", "ink") if k in attrs)  # "small red"
    if digit and adj:
        subject = (f"a {adj} {digit}", f"a {adj} digit {digit}", f"the {adj} number {digit}")
    elif digit:
        subject = (f"a handwritten {digit}", f"a handwritten digit {digit}", f"the number {digit}")
    elif adj:
        subject = (f"a {adj} digit", f"a {adj} handwritten digit", f"a {adj} number")
    else:
        subject = ("a handwritten digit", "a digit", "a number")
    words = [subject[variant % 3]]
    if "background" in attrs:
        words.append(f"on a {attrs['background']} background")
    return " ".join(words)


def parse_prompt(prompt: str) -> dict[str, str]:
    """The attributes a prompt names, e.g. {'digit': 'seven', 'ink': 'red'}."""
    words = prompt.lower().replace(",", " ").split()
    unknown = sorted({w for w in words if w not in WORDS})
    if unknown:
        raise CompressError(
            f"prompt {prompt!r} has words outside the miniature vocabulary: {unknown}; "
            f"use only: {' '.join(WORDS)}"
        )
    found: dict[str, str] = {}

    def put(attr: str, value: str) -> None:
        if attr in found:
            raise CompressError(f"prompt {prompt!r} names the {attr} twice")
        found[attr] = value

    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w in DIGITS:
            put("digit", w)
        elif w in COLOURS:
            put("background" if nxt == "background" else "ink", w)
        elif w in SIZES:
            put("size", w)
    return found


def attrs_to_names(row: np.ndarray) -> dict[str, str]:
    """Class indices [digit, ink, background, size] -> attribute names."""
    return {k: vals[int(i)] for (k, vals), i in zip(ATTRIBUTES.items(), row, strict=True)}


def random_prompts(rng: np.random.Generator, attrs: np.ndarray, keep: float = 0.7) -> list[str]:
    """Training prompts: each attribute is named with probability `keep` (the digit 0.9)."""
    out = []
    for row in attrs:
        names = attrs_to_names(row)
        p = {"digit": 0.9, "ink": keep, "background": keep, "size": keep}
        named = {k: v for k, v in names.items() if rng.random() < p[k]}
        out.append(make_prompt(named, int(rng.integers(0, 6))))
    return out


def batches(
    rng: np.random.Generator, split: str, batch: int, ramp: tuple[int, int] | None = None
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Endless random compositions of one split's glyphs: (images in [0, 1], attribute indices).

    With `ramp` (start, end), a colour curriculum: before step `start` every glyph is black ink on
    white, then the share drawn with random colours grows linearly to all of them at `end`.
    """
    glyphs, digits = load_split(split)
    step = 0
    while True:
        idx = rng.integers(0, len(glyphs), batch)
        attrs = sample_attributes(rng, digits[idx])
        if ramp is not None:  # its own stream: the compositions drawn from `rng` stay the same
            plain = np.random.default_rng(step).random(batch) >= colour_share(step, *ramp)
            attrs[plain, 1] = ATTRIBUTES["ink"].index("black")
            attrs[plain, 2] = ATTRIBUTES["background"].index("white")
        step += 1
        yield compose(glyphs[idx], attrs), attrs


def colour_share(step: int, start: int, end: int) -> float:
    """The share of a batch drawn with random colours at `step` of the colour curriculum."""
    if end <= start:
        return float(step >= start)
    return min(1.0, max(0.0, (step - start) / (end - start)))

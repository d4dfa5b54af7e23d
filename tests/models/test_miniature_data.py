"""The composed-digits data, prompts and the fixed evaluation set (no model needed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from compress.errors import CompressError
from compress.models.miniature import data as D
from compress.models.miniature.prompts import (
    DEFAULT_CALL,
    DEFAULT_SCHEDULER,
    EVAL_PROMPTS,
    EVAL_SEEDS,
    PROMPT_SET_VERSION,
)


def test_split_is_deterministic_disjoint_and_complete() -> None:
    (gt, yt), (gv, yv) = D.load_split("train"), D.load_split("val")
    gt2, yt2 = D.load_split("train")
    assert np.array_equal(gt, gt2) and np.array_equal(yt, yt2)
    assert len(gt) + len(gv) == 1797 and len(gv) == 360
    assert sorted(set(yv.tolist())) == list(range(10))  # stratified: every digit held out
    rows_t = {g.tobytes() for g in gt}
    assert sum(g.tobytes() in rows_t for g in gv) < 5  # only the dataset's own duplicates
    assert gt.min() >= 0 and gt.max() <= 1
    with pytest.raises(CompressError, match="split"):
        D.load_split("test")


def test_compose_colours_and_sizes() -> None:
    glyph = np.ones((2, 8, 8), np.float32)
    attrs = np.array([[3, 2, 4, 0], [3, 2, 4, 1]])  # red ink on blue, small then large
    small, large = D.compose(glyph, attrs)
    assert small.shape == (3, 32, 32)
    for x in (small, large):
        assert np.allclose(x[:, 0, 0].numpy(), D.COLOURS["blue"])
        assert np.allclose(x[:, 16, 16].numpy(), D.COLOURS["red"])
    ink = np.array(D.COLOURS["red"], np.float32)[:, None, None]
    area = [int(np.isclose(x.numpy(), ink).all(0).sum()) for x in (small, large)]
    assert area == [side * side for side in D.SIZES.values()]  # centred squares of each side
    a = D.sample_attributes(np.random.default_rng(0), np.zeros(500, np.int64))
    assert (a[:, 1] != a[:, 2]).all() and set(a[:, 3].tolist()) == {0, 1}
    x1, a1 = D.heldout(n_per_glyph=1)
    x2, a2 = D.heldout(n_per_glyph=1)
    assert np.array_equal(a1, a2) and bool((x1 == x2).all())


@pytest.mark.parametrize("variant", range(6))
def test_prompt_round_trip_every_subset(variant: int) -> None:
    names = {"digit": "seven", "ink": "red", "background": "blue", "size": "small"}
    for r in range(len(names) + 1):
        for keys in itertools.combinations(names, r):
            named = {k: names[k] for k in keys}
            prompt = D.make_prompt(named, variant)
            assert D.parse_prompt(prompt) == named, prompt
            assert len(prompt.split()) + 2 <= D.MAX_TOKENS


def test_parse_prompt_rejects_what_it_cannot_read() -> None:
    with pytest.raises(CompressError, match="vocabulary"):
        D.parse_prompt("a purple seven")
    with pytest.raises(CompressError, match="twice"):
        D.parse_prompt("a seven on a one")
    with pytest.raises(CompressError, match="twice"):
        D.parse_prompt("a small large seven")


def test_training_prompts_name_true_attributes() -> None:
    rng = np.random.default_rng(0)
    glyphs, digits = D.load_split("train")
    attrs = D.sample_attributes(rng, digits[:200])
    for prompt, row in zip(D.random_prompts(rng, attrs), attrs, strict=True):
        truth = D.attrs_to_names(row)
        assert all(truth[k] == v for k, v in D.parse_prompt(prompt).items())


def test_eval_set_is_fixed_and_compositional() -> None:
    assert PROMPT_SET_VERSION and 32 <= len(EVAL_PROMPTS) <= 64
    assert len(EVAL_SEEDS) == len(EVAL_PROMPTS) == len(set(EVAL_PROMPTS))
    named = [D.parse_prompt(p) for p in EVAL_PROMPTS]
    assert all(named)
    assert sum(len(n) == 4 for n in named) >= 8 and sum(len(n) < 4 for n in named) >= 8
    assert {n["digit"] for n in named if "digit" in n} == set(D.DIGITS)
    assert DEFAULT_CALL["num_inference_steps"] == 20 and DEFAULT_SCHEDULER == "dpmsolver++"

"""Quantized candidates are compared with their unquantized parent, paired; no faster -> flagged
plainly."""

from __future__ import annotations

import pytest

from compress.errors import CompressError
from compress.recipe import Recipe, Scores
from compress.search.ledger import TrialRecord
from compress.search.speed import flag_scores, parent_transforms
from compress.transforms.quantize.ptq import NOT_FASTER

QUANT = {"kind": "quantize", "rules": [{"match": "mid_block", "format": "int8_weight_only"}]}
SAMPLER = {"kind": "sampler", "steps": 2}


def test_parent_is_the_recipe_without_quantization() -> None:
    both = Recipe(name="a", transforms=[QUANT, SAMPLER])
    assert [t.kind for t in parent_transforms(both)] == ["sampler"]
    assert parent_transforms(Recipe(name="b", transforms=[QUANT])) == []
    assert parent_transforms(Recipe(name="c", transforms=[SAMPLER])) is None


def test_flag_follows_the_paired_interval_against_the_parent() -> None:
    slower = Scores(parent_speedup=0.8, parent_speedup_ci=[0.7, 0.9])
    within_noise = Scores(parent_speedup=1.05, parent_speedup_ci=[0.97, 1.1])
    faster = Scores(parent_speedup=1.6, parent_speedup_ci=[1.4, 1.8], flags=[NOT_FASTER, "x"])
    assert NOT_FASTER in flag_scores(slower).flags
    assert NOT_FASTER in flag_scores(within_noise).flags
    assert flag_scores(faster).flags == ["x"]
    assert flag_scores(Scores()).flags == []  # nothing quantized: no parent, no claim
    from compress.transforms.quantize.ptq import flag_if_not_faster

    with pytest.raises(CompressError, match="paired speed-up over its parent"):
        flag_if_not_faster(Scores())


def test_report_says_plainly_quantized_but_no_faster() -> None:
    from compress.report.html import _trials_table

    flagged = TrialRecord(
        number=3,
        state="complete",
        speedup=2.0,
        speedup_ci=[1.8, 2.2],
        quality=0.9,
        parent_speedup=0.9,
        parent_speedup_ci=[0.8, 1.0],
        scores={"flags": [NOT_FASTER]},
    )
    plain = TrialRecord(number=4, state="complete", speedup=3.0, speedup_ci=[2.5, 3.5], quality=0.9)
    slow = TrialRecord(number=5, state="complete", speedup=1.0, speedup_ci=[0.9, 1.1], quality=0.9)
    page = _trials_table([flagged, plain, slow], set())
    assert page.count("quantized, but no faster than its unquantized parent (0.90x") == 1
    assert page.count("no faster than the baseline") == 1

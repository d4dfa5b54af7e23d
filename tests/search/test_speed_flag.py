"""Quantized candidates are compared with their unquantized parent; no faster -> flagged plainly."""

from __future__ import annotations

import logging

from compress.recipe import Recipe, Scores
from compress.search.ledger import TrialRecord
from compress.search.speed import flag_scores, parent_latency, parent_transforms
from compress.search.trial import TrialJob
from compress.transforms.quantize import NOT_FASTER

QUANT = {"kind": "quantize", "rules": [{"match": "mid_block", "format": "int8_weight_only"}]}
SAMPLER = {"kind": "sampler", "steps": 2}
LOG = logging.getLogger("test")


def job(model: str, baseline: tuple[float, float] | None = None) -> TrialJob:
    settings = {"steps": 2, "timed_runs": 2, "warmup": 0, "metric": "fidelity", "threads": 1}
    return TrialJob(
        run="r",
        run_id="r",
        model=model,
        space={},
        space_source="s",
        settings=settings,
        stage_prompts=None,
        baseline_latency=baseline,
    )


def test_parent_is_the_recipe_without_quantization() -> None:
    both = Recipe(name="a", transforms=[QUANT, SAMPLER])
    assert [t.kind for t in parent_transforms(both)] == ["sampler"]
    assert parent_transforms(Recipe(name="b", transforms=[QUANT])) == []
    assert parent_transforms(Recipe(name="c", transforms=[SAMPLER])) is None


def test_baseline_is_the_parent_of_a_pure_quantization_and_flags_a_slower_candidate(
    tiny_dir,
) -> None:
    parent = parent_latency(
        job(str(tiny_dir), (50.0, 2.0)), Recipe(name="q", transforms=[QUANT]), LOG
    )
    assert parent == Scores(latency_ms=50.0, latency_spread_ms=2.0)
    assert NOT_FASTER in flag_scores(Scores(latency_ms=55.0), parent).flags
    assert flag_scores(Scores(latency_ms=30.0), parent).flags == []
    assert flag_scores(Scores(latency_ms=55.0), None).flags == []  # no parent: no claim


def test_a_parent_with_other_transforms_is_timed_in_the_trial(tiny_dir) -> None:
    recipe = Recipe(name="sq", transforms=[QUANT, SAMPLER])
    parent = parent_latency(job(str(tiny_dir), (1e9, 0.0)), recipe, LOG)  # baseline not used
    assert parent is not None and 0 < parent.latency_ms < 1e9
    assert parent_latency(job(str(tiny_dir)), Recipe(name="s", transforms=[SAMPLER]), LOG) is None


def test_report_says_plainly_quantized_but_no_faster() -> None:
    from compress.report.html import _trials_table

    flagged = TrialRecord(
        number=3, state="complete", latency_ms=9.0, quality=0.9, scores={"flags": [NOT_FASTER]}
    )
    plain = TrialRecord(number=4, state="complete", latency_ms=5.0, quality=0.9)
    page = _trials_table([flagged, plain], set())
    assert page.count("quantized, but no faster than its unquantized parent") == 1

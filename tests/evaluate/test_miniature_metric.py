"""The miniature judge as a metric, and bench/eval of the built-in miniature pipeline."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from compress.evaluate import EvalSettings, evaluate
from compress.evaluate.quality import get_metric
from compress.models.miniature import WEIGHTS
from compress.models.miniature.judge import FD_WEIGHT, JUDGE_FILE, JUDGE_VERSION
from compress.models.miniature.prompts import EVAL_PROMPTS, EVAL_SEEDS, PROMPT_SET_VERSION

needs_weights = pytest.mark.skipif(
    not (JUDGE_FILE.is_file() and (WEIGHTS / "model_index.json").is_file()),
    reason="the miniature weights are not built (python scripts/train_miniature.py)",
)


def test_prompts_seeds_and_version_are_the_judges() -> None:
    metric = get_metric("miniature")
    prompts, seeds = metric.prompts(6)
    assert prompts == EVAL_PROMPTS[:6] and seeds == EVAL_SEEDS[:6]
    assert metric.version == f"{JUDGE_VERSION}/{PROMPT_SET_VERSION}"
    assert metric.prompts(None)[0] == EVAL_PROMPTS


@needs_weights
def test_evaluate_miniature_scores_more_steps_higher() -> None:
    from compress.models.loading import load_pipeline

    pipe = load_pipeline("miniature")
    base = EvalSettings(metric="miniature", num_prompts=12, steps=10, threads=1, timed_runs=2)
    good = evaluate(pipe, base)
    assert good.quality_metric == "miniature" and good.quality_metric_version.startswith(
        JUDGE_VERSION
    )
    parts = good.quality_parts
    assert 0.0 <= parts["adherence"] <= 1.0 and parts["realism_fd"] >= 0.0
    assert good.quality == pytest.approx(parts["adherence"] - FD_WEIGHT * parts["realism_fd"])
    assert any(k.startswith("attr.") for k in parts)
    rushed = evaluate(pipe, base.model_copy(update={"steps": 1}))
    assert rushed.quality < good.quality
    assert rushed.latency_ms < good.latency_ms


@needs_weights
def test_bench_and_eval_commands_on_miniature(tmp_path: Path) -> None:
    from compress.commands.evaluate import run_bench, run_eval

    console = Console(file=io.StringIO(), width=120)
    run_bench(
        console, model="miniature", arch=None, json_out=tmp_path / "b.json", threads=1, timed_runs=2
    )
    run_eval(
        console,
        model="miniature",
        reference=None,
        weights=None,
        prompts=None,
        images_dir=None,
        json_out=tmp_path / "e.json",
        metric="miniature",
        num_prompts=4,
        threads=1,
        timed_runs=2,
    )
    bench = json.loads((tmp_path / "b.json").read_text())
    score = json.loads((tmp_path / "e.json").read_text())
    assert bench["source"]["model"] == "miniature" and bench["median_ms"] > 0
    assert score["quality_metric"] == "miniature" and len(score["prompts"]) == 4
    text = console.file.getvalue()
    assert "denoiser" in text and "adherence" in text

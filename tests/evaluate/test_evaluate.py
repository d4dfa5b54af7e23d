"""evaluate(pipe, settings) -> Score on the tiny pipeline (fidelity needs no weights); CLI eval."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from compress.errors import CompressError
from compress.evaluate import EvalSettings, Score, evaluate, reference_images
from compress.evaluate.quality import get_metric
from compress.models.tiny import build_tiny_pipeline
from compress.recipe import Scores

SETTINGS = EvalSettings(metric="fidelity", num_prompts=3, steps=2, threads=1, timed_runs=2, seed=5)


def test_fidelity_of_itself_and_of_another_model(tiny_pipe) -> None:
    refs = reference_images(tiny_pipe, SETTINGS)
    same = evaluate(tiny_pipe, SETTINGS, reference_images=refs)
    assert same.quality == pytest.approx(1.0) and same.quality_parts["psnr_db"] == 100.0
    other = evaluate(build_tiny_pipeline(seed=1), SETTINGS, reference_images=refs)
    assert other.quality < 0.9 and other.quality_parts["psnr_db"] < 30
    assert other.quality_metric == "fidelity"
    assert other.quality_metric_version == get_metric("fidelity").version
    # fixed prompts and seeds (offset by settings.seed); images kept for the report
    assert other.prompts == same.prompts and len(other.prompts) == 3
    assert other.seeds == [5, 6, 7] and len(other.images) == 3
    assert other.images[0].size == (16, 16)
    s = other.settings
    assert (s["steps"], s["resolution"], s["dtype"], s["threads"]) == (2, 16, "float32", 1)
    assert other.latency_ms > 0 and set(other.components_ms) >= {"denoiser", "vae_decode"}


def test_score_serialises_without_images_and_feeds_a_recipe(tiny_pipe) -> None:
    refs = reference_images(tiny_pipe, SETTINGS)
    score = evaluate(tiny_pipe, SETTINGS, reference_images=refs)
    data = json.loads(score.model_dump_json())
    assert "images" not in data and data["latency"]["runs_ms"]
    back = Score.model_validate(data)
    assert back.quality == score.quality and back.images == []
    scores = score.to_recipe_scores()
    assert isinstance(scores, Scores) and scores.quality_metric == "fidelity"
    assert scores.settings["num_prompts"] == 3 and scores.latency_ms == score.latency_ms


def test_missing_reference_fails_before_any_work(tiny_pipe, monkeypatch) -> None:
    import compress.evaluate.run as run

    monkeypatch.setattr(run, "measure_latency", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(CompressError, match="reference_images"):
        evaluate(tiny_pipe, SETTINGS)
    with pytest.raises(CompressError, match="'clip' given"):
        evaluate(tiny_pipe, SETTINGS, metric=get_metric("clip"))


def test_settings_are_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        EvalSettings(stepz=3)
    with pytest.raises(ValueError, match="unknown metric"):
        EvalSettings(metric="hps")
    with pytest.raises(ValueError, match="dtype"):
        EvalSettings(dtype="float8")


def test_eval_command_writes_json_and_images(tiny_dir: Path, tmp_path: Path) -> None:
    from compress.commands.evaluate import run_eval

    console = Console(file=io.StringIO(), width=120)
    out = tmp_path / "eval.json"
    run_eval(
        console,
        model=str(tiny_dir),
        reference=str(tiny_dir),
        weights=None,
        prompts=None,
        images_dir=tmp_path / "img",
        json_out=out,
        metric="fidelity",
        num_prompts=2,
        steps=2,
        threads=1,
        timed_runs=2,
    )
    data = json.loads(out.read_text())
    assert data["kind"] == "eval" and data["quality_metric"] == "fidelity"
    assert data["quality"] == pytest.approx(1.0) and data["source"]["reference"] == str(tiny_dir)
    assert data["latency"]["device_name"] and data["latency"]["versions"]["torch"]
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == [
        "0000_seed0.png",
        "0001_seed1.png",
    ]
    assert "psnr_db" in console.file.getvalue()


def test_cli_error_is_one_line(tiny_dir: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    run = [sys.executable, "-m", "compress"]
    out = subprocess.run(
        [*run, "bench", "--model", str(tiny_dir), "--arch", "sd15"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 1 and "exactly one of --model" in out.stderr
    assert "Traceback" not in out.stderr


def test_eval_fidelity_needs_a_reference(tiny_dir: Path) -> None:
    from compress.commands.evaluate import run_eval

    with pytest.raises(CompressError, match="--reference MODEL"):
        run_eval(
            Console(file=io.StringIO()),
            model=str(tiny_dir),
            reference=None,
            weights=None,
            prompts=None,
            images_dir=None,
            json_out=None,
            metric="fidelity",
        )

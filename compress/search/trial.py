"""One search trial on a Ray worker: build the recipe, apply it, evaluate in stages, keep it all.

Stage 1 scores the candidate on a small prompt subset (without recovery training) and reports
it; the driver's scheduler stops the trial there when the current front clearly dominates it.
Survivors pay for training transforms and the full prompt set (stage 2).
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.recipe import write_atomic
from compress.search.ledger import TrialRecord, read_records, trial_dir, write_json
from compress.search.speed import flag_scores, parent_latency
from compress.search.staging import TrialFailed, evaluate_stage, extend

if TYPE_CHECKING:
    from compress.evaluate import Score
    from compress.recipe import Recipe, Scores

RESERVED = ("number", "invalid")  # config keys that are not knobs


@dataclass(frozen=True)
class TrialJob:
    """What every trial needs, shipped to workers once (plain data: picklable, no models)."""

    run: str
    run_id: str
    model: str
    space: dict[str, Any]  # the validated SpaceFile, re-validated on the worker
    space_source: str
    settings: dict[str, Any]  # EvalSettings fields for the full evaluation
    stage_prompts: int | None  # None: a single, full evaluation
    dtype: str | None = None
    reference_images: list[str] = field(default_factory=list)  # baseline images (fidelity)
    metric_options: dict[str, Any] = field(default_factory=dict)  # weights, prompts
    # (median, spread) ms of the uncompressed baseline when measured with `settings` exactly
    baseline_latency: tuple[float, float] | None = None


def _logger(path: Path) -> logging.Logger:
    log = logging.getLogger(f"compress.trial.{path.parent.name}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.handlers = [handler]
    return log


def save_images(images: list[Any], folder: Path, prefix: str = "") -> list[str]:
    """Save PIL images as PNG (atomically, by rename); return the file names."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images):
        name = f"{prefix}{i:02d}.png"
        tmp = folder / f".{name}.tmp"
        image.save(tmp, format="PNG")
        os.replace(tmp, folder / name)
        names.append(name)
    return names


def run_trial(config: dict[str, Any], job: TrialJob) -> None:
    """The Ray Tune trainable: reports stage 1 then stage 2 metrics; raises on failure."""
    import ray
    from ray import tune

    number = int(config["number"])
    params = {k: v for k, v in config.items() if k not in RESERVED}
    folder = trial_dir(Path(job.run), number)
    folder.mkdir(parents=True, exist_ok=True)
    node = ray.get_runtime_context().get_node_id()
    write_json(folder / "config.json", {"number": number, "params": params, "node": node})
    log = _logger(folder / "log.txt")
    log.info("trial %d on node %s: %s", number, node, params)
    start = time.perf_counter()
    try:
        # Times and stage-1 scores are carried on, so the last result holds them all.
        times: dict[str, float] = {}
        for result in _stages(config, params, number, job, folder, log):
            times.update(
                {k: v for k, v in result.items() if k.endswith("_s") or k[:7] == "stage1_"}
            )
            result.update(times, number=number, node=node, trial_s=time.perf_counter() - start)
            tune.report(result)  # blocks until the driver asks to go on (or stops the trial)
    except SystemExit:  # how Tune ends a trial its scheduler stopped
        log.info("stopped by the scheduler after stage 1: the front clearly dominates it")
        raise
    except BaseException as exc:
        log.error("failed:\n%s", traceback.format_exc())
        write_atomic(folder / "error.txt", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        for h in log.handlers:
            h.close()


def _stages(
    config: dict[str, Any],
    params: dict[str, Any],
    number: int,
    job: TrialJob,
    folder: Path,
    log: logging.Logger,
):
    from optuna.trial import FixedTrial

    from compress._quiet import import_heavy
    from compress.evaluate import EvalSettings
    from compress.recipe import save_recipe
    from compress.search.space import SearchSpace, SpaceFile
    from compress.transforms.base import Stage, spec_of

    import_heavy()
    if "invalid" in config:
        raise TrialFailed(config["invalid"])
    space = SearchSpace(SpaceFile.model_validate(job.space), job.space_source)
    recipe = space.suggest(FixedTrial(params, number))
    save_recipe(recipe, folder / "recipe.yaml")
    earlier = same_knobs(Path(job.run), params, number)
    if earlier is not None:  # samplers repeat points of a discrete space: no second evaluation
        log.info("same knobs as trial %d: reusing its scores", earlier.number)
        yield {
            "stage": 2,
            "latency_ms": earlier.latency_ms,
            "quality": earlier.quality,
            "scores": earlier.scores,
            "components_ms": earlier.components_ms,
            "duplicate_of": earlier.number,
        }
        return
    full = EvalSettings(**job.settings)
    refs = _references(job)
    training = any(spec_of(t).stage == Stage.training for t in recipe.transforms)
    pipe = applied = None
    if job.stage_prompts is not None:
        quick = [t for t in recipe.transforms if spec_of(t).stage != Stage.training]
        t0 = time.perf_counter()
        pipe, applied = _build(job, recipe.model_copy(update={"transforms": quick}), folder, log)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        subset = full.model_copy(update={"num_prompts": job.stage_prompts})
        score = evaluate_stage(pipe, subset, refs, log, "stage 1", job.metric_options)
        save_images(score.images, folder / "images", prefix="s1_")
        yield {**_metrics(1, score, time.perf_counter() - t0, training), "setup_s": setup}
    # Stage 2 costs what a survivor pays beyond stage 1: training, rebuilding, the full prompt set.
    t0 = time.perf_counter()
    if pipe is not None and not training:
        score = extend(pipe, score, full, refs, log, job.metric_options)
    else:
        pipe, applied = _build(job, recipe, folder, log)
        score = evaluate_stage(pipe, full, refs, log, "stage 2", job.metric_options)
    save_images(score.images, folder / "images")
    scores = flag_scores(score.to_recipe_scores(), parent_latency(job, recipe, log))
    save_recipe(_finished(applied, scores, job, number), folder / "recipe.yaml")
    yield _metrics(2, score, time.perf_counter() - t0, training, scores)


def same_knobs(run: Path, params: dict[str, Any], number: int) -> TrialRecord | None:
    """An earlier fully evaluated trial with exactly these knob values, if any."""
    for r in read_records(run):
        if r.number != number and r.state == "complete" and r.params == params and r.point:
            return r if r.duplicate_of is None else None
    return None


def _build(job: TrialJob, recipe: Recipe, folder: Path, log: logging.Logger) -> tuple[Any, Recipe]:
    from compress.apply import apply_recipe
    from compress.context import RunContext
    from compress.models.loading import load_pipeline
    from compress.transforms.base import Stage, spec_of

    device = job.settings.get("device", "cpu")
    pipe = load_pipeline(job.model, device=device, dtype=job.dtype)
    ctx = RunContext(device=device, out_dir=folder)
    if any(spec_of(t).stage == Stage.training for t in recipe.transforms):
        ctx.teacher = load_pipeline(job.model, device=device, dtype=job.dtype)
    t0 = time.perf_counter()
    applied = apply_recipe(pipe, recipe, ctx)
    log.info("applied %s in %.2f s", [t.kind for t in recipe.transforms], time.perf_counter() - t0)
    return pipe, applied


def _references(job: TrialJob) -> list[Any] | None:
    if not job.reference_images:
        return None
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in job.reference_images]


def _finished(applied: Recipe, scores: Scores, job: TrialJob, number: int) -> Recipe:
    from compress.recipe import Provenance, library_versions

    provenance = Provenance(
        source_model=job.model,
        run_id=job.run_id,
        trial_id=f"{number:04d}",
        versions=library_versions(),
    )
    return applied.model_copy(update={"scores": scores, "provenance": provenance})


def _metrics(
    stage: int, score: Score, seconds: float, training: bool, scores: Scores | None = None
) -> dict[str, Any]:
    scores = scores or score.to_recipe_scores()
    return {
        "stage": stage,
        "latency_ms": float(score.latency_ms),
        "quality": float(score.quality),
        "scores": scores.model_dump(mode="json"),
        "components_ms": {k: float(v) for k, v in score.components_ms.items()},
        f"stage{stage}_s": seconds,
        f"stage{stage}_latency_ms": float(score.latency_ms),
        f"stage{stage}_quality": float(score.quality),
        "training": training,
    }

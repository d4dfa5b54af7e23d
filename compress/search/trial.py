"""One search trial on a Ray worker: build the candidate, time it paired, score it in rungs.

A trial pins itself to cores of its own, builds its candidate (structure and training from the
prefix cache, then numeric and runtime transforms), times it against the uncompressed baseline
in alternating rounds, and reports its quality at each rung: for a candidate that trains, after
each fraction of its training budget (resuming from the checkpoint of the last rung), on the
stage prompts; the last rung then goes on to the full prompt set. The driver's scheduler stops
it at any rung where the front of that rung clearly dominates it.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.evaluate.settings import EvalSettings
from compress.fs import write_atomic
from compress.search.ledger import TrialRecord, TrialResult, read_records, trial_dir, write_json
from compress.search.staging import TrialFailed, evaluate_stage, extend

if TYPE_CHECKING:
    from compress.evaluate.paired import PairedTiming
    from compress.recipe import Recipe, Scores

RESERVED = ("number", "invalid", "origin", "why", "parent")  # config keys that are not knobs


@dataclass(frozen=True)
class TrialJob:
    """What every trial needs, shipped to workers once (plain data: picklable, no models)."""

    run: str
    run_id: str
    model: str
    space: dict[str, Any]  # the validated SpaceFile, re-validated on the worker
    space_source: str
    settings: EvalSettings  # the full evaluation's
    baseline_settings: EvalSettings  # ...and the uncompressed reference's (its usual call)
    stage_prompts: int | None  # None: every evaluation on the full prompt set
    rungs: list[float] = field(default_factory=lambda: [1.0])  # training fractions to score at
    rounds: int = 8  # paired timing rounds
    dtype: str | None = None
    reference_images: list[str] = field(default_factory=list)  # baseline images (fidelity)
    metric_options: dict[str, Any] = field(default_factory=dict)  # weights, prompts
    cpus: float = 1.0
    gpus: float = 0.0
    max_concurrent: int = 1
    cache_dir: str | None = None  # the prefix cache; None: no reuse between trials
    data: str | None = None  # training images with captions (RunContext.data)
    prompts_file: str | None = None  # prompts the teacher draws (RunContext.prompts)
    weights: str = ""  # the model's weights digest (cache keys)
    data_identity: dict[str, Any] = field(default_factory=dict)


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


def shares_node(job: TrialJob) -> bool:
    """True when this node's trials cannot each keep to cores (or a GPU) of their own."""
    import os

    return job.cpus * job.max_concurrent > len(os.sched_getaffinity(0)) or 0 < job.gpus < 1


def run_trial(config: dict[str, Any], job: TrialJob) -> None:
    """The Ray Tune trainable: reports each rung, then the full evaluation; raises on failure."""
    import ray
    from ray import tune

    from compress.search.isolation import pinned

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
        with pinned(job.cpus, shared=shares_node(job)) as place:
            log.info("placement: %s", place.describe())
            for result in _stages(config, params, number, job, folder, log, place):
                result.number, result.node = number, node
                result.times["trial"] = time.perf_counter() - start
                tune.report(result.report())  # blocks until the driver asks to go on (or stops)
    except SystemExit:  # how Tune ends a trial its scheduler stopped
        log.info("stopped by the scheduler: the front at this rung clearly dominates it")
        raise
    except BaseException as exc:
        log.error("failed:\n%s", traceback.format_exc())
        write_atomic(folder / "error.txt", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        for h in log.handlers:
            h.close()


def _stages(config, params, number, job, folder, log, place):  # noqa: ANN001, ANN202
    from optuna.trial import FixedTrial

    from compress._quiet import import_heavy
    from compress.recipe import save_recipe
    from compress.search.build import rungs_for, split
    from compress.search.isolation import work_phase
    from compress.search.pairing import time_trial
    from compress.search.space import SearchSpace, SpaceFile
    from compress.search.speed import parent_transforms

    import_heavy()
    _fresh_compiler()
    if "invalid" in config:
        raise TrialFailed(config["invalid"])
    space = SearchSpace(SpaceFile.model_validate(job.space), job.space_source)
    recipe = space.suggest(FixedTrial(params, number))
    save_recipe(recipe, folder / "recipe.yaml")
    earlier = same_knobs(Path(job.run), params, number)
    if earlier is not None:  # samplers repeat points of a discrete space: no second evaluation
        log.info("same knobs as trial %d: reusing its scores", earlier.number)
        yield earlier.result().model_copy(update={"duplicate_of": earlier.number})
        return
    full = job.settings
    quick = (
        full.model_copy(update={"num_prompts": job.stage_prompts}) if job.stage_prompts else full
    )
    refs = _references(job)
    plan = split(recipe)
    builder = _builder(job, number, log)
    fractions = [1.0] if builder.cached_fraction(plan) else rungs_for(plan, job.rungs)
    progress = Progress(training=plan.trains)
    timing = None
    for fraction in fractions:
        t0 = time.perf_counter()
        with work_phase(place):
            pipe, applied, parent = builder.candidate(
                plan, fraction, parent=timing is None and parent_transforms(recipe) is not None
            )
        progress.times["build"] = progress.times.get("build", 0.0) + time.perf_counter() - t0
        if timing is None:
            t0 = time.perf_counter()
            timing = time_trial(
                pipe,
                parent,
                model=job.model,
                dtype=job.dtype,
                settings=full,
                baseline_settings=job.baseline_settings,
                rounds=job.rounds,
                place=place,
                log=log,
            )
            progress.times["timing"] = time.perf_counter() - t0
            del parent
        t0 = time.perf_counter()
        with work_phase(place):
            score = evaluate_stage(pipe, quick, refs, log, f"rung {fraction:g}", job.metric_options)
        progress.times["evaluation"] = progress.times.get("evaluation", 0.0) + (
            time.perf_counter() - t0
        )
        last = fraction == fractions[-1]
        if not (last and quick is full):
            progress.cache = builder.record
            yield progress.report(1, fraction, score, timing)
        if last:
            t0 = time.perf_counter()
            if quick is not full:
                with work_phase(place):
                    score = extend(pipe, score, full, refs, log, job.metric_options)
            progress.times["evaluation"] += time.perf_counter() - t0
            save_images(score.images, folder / "images")
            scores = _scores(score, timing)
            save_recipe(_finished(applied, recipe, scores, job, number), folder / "recipe.yaml")
            progress.cache = builder.record
            yield progress.report(2, fraction, score, timing, scores)


def _fresh_compiler() -> None:
    """Each trial compiles its own candidate from a clean dynamo cache: a reused worker would
    otherwise pile one trial's graphs on the last one's until dynamo's recompile limit, which a
    full-graph compile turns into a failure (the on-disk inductor cache still serves repeats)."""
    import sys

    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()


@dataclass
class Progress:
    """What a trial has reported so far: each rung's point, times and cache use."""

    training: bool
    rungs: list[dict[str, Any]] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)
    cache: Any = None

    def report(
        self,
        stage: int,
        fraction: float,
        score: Any,
        timing: PairedTiming,
        scores: Scores | None = None,
    ) -> TrialResult:
        from compress.search.pairing import BASELINE, PARENT

        ratio = timing.speedup[BASELINE]
        point = {
            "stage": stage,
            "training_fraction": fraction if self.training else None,
            "prompts": len(score.prompts),
            "relative_latency": 1.0 / ratio.median,
            "quality": float(score.quality),
            "peak_memory_mb": score.peak_memory_mb,  # sampling at the evaluation batch
        }
        if stage == 1:
            self.rungs.append(point)
        parent = timing.speedup.get(PARENT)
        cache = self.cache
        return TrialResult(
            **point,
            latency_ms=timing.median_ms(),
            reference_latency_ms=timing.median_ms(BASELINE),
            speedup=ratio.median,
            speedup_ci=[ratio.low, ratio.high],
            parent_speedup=parent.median if parent else None,
            parent_speedup_ci=parent.ci if parent else None,
            scores=(scores or score.to_recipe_scores()).model_dump(mode="json"),
            components_ms=_medians(timing.components_ms["candidate"]),
            reference_components_ms=_medians(timing.components_ms[BASELINE]),
            rungs=list(self.rungs),
            training=self.training,
            cache={"hits": cache.hits if cache else [], "misses": cache.misses if cache else []},
            times=dict(self.times),
        )


def _medians(parts: dict[str, list[float]]) -> dict[str, float]:
    import statistics

    return {k: statistics.median(v) for k, v in parts.items()}


def _builder(job: TrialJob, number: int, log: logging.Logger) -> Any:
    from compress.search.build import Builder
    from compress.search.cache import PrefixCache
    from compress.versions import library_versions

    device = job.settings.device

    def load(folder: Path | None = None) -> Any:
        from compress.artifact import load_artifact, load_model

        if folder is not None:
            return load_artifact(folder, device=device, dtype=job.dtype)
        return load_model(job.model, device=device, dtype=job.dtype)

    digest = job.weights if re.fullmatch(r"[0-9a-f]{64}", job.weights) else None
    return Builder(
        load=load,
        context={
            "device": device,
            "data": _data(job),
            "prompts": _prompts(job),
            # teacher-drawn training data, shared by every trial through the cache folder
            "data_cache": Path(job.cache_dir) / "data" if job.cache_dir else None,
            "teacher_digest": digest,  # the teacher is the model: its files' digest
        },
        cache=PrefixCache(job.cache_dir) if job.cache_dir else None,
        weights=job.weights,
        data=job.data_identity,
        versions=library_versions(),
        trial=number,
        log=log,
    )


def _data(job: TrialJob) -> Path | None:
    """The training images; a node that cannot read them fails the trial naming the path."""
    if job.data is None:
        return None
    path = Path(job.data)
    if not path.is_dir():
        raise TrialFailed(
            f"training data {path} is not readable on this node; put it on storage every node "
            "mounts at the same path"
        )
    return path


def _prompts(job: TrialJob) -> list[str]:
    if job.prompts_file is None:
        return []
    path = Path(job.prompts_file)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TrialFailed(f"prompts file {path} is not readable on this node: {exc}") from None
    return [ln.strip() for ln in lines if ln.strip()]


def _scores(score: Any, timing: PairedTiming) -> Scores:
    """The recipe's scores: quality on the full set, latency and speed-ups from paired timing."""
    from compress.search.pairing import BASELINE, PARENT
    from compress.search.speed import flag_scores

    ratio, parent = timing.speedup[BASELINE], timing.speedup.get(PARENT)
    scores = score.to_recipe_scores().model_copy(
        update={
            "latency_ms": timing.median_ms(),
            "latency_spread_ms": timing.spread_ms(),
            "speedup": ratio.median,
            "speedup_ci": ratio.ci,
            "reference": {
                "baseline": "the uncompressed model",
                "baseline_latency_ms": timing.median_ms(BASELINE),
                "baseline_settings": timing.settings[BASELINE],
                "rounds": timing.rounds,
                "threads": timing.threads,
            },
            "parent_speedup": parent.median if parent else None,
            "parent_speedup_ci": parent.ci if parent else None,
        }
    )
    return flag_scores(scores)


def same_knobs(run: Path, params: dict[str, Any], number: int) -> TrialRecord | None:
    """An earlier fully evaluated trial with exactly these knob values, if any."""
    for r in read_records(run):
        if r.number != number and r.state == "complete" and r.params == params and r.point:
            return r if r.duplicate_of is None else None
    return None


def _references(job: TrialJob) -> list[Any] | None:
    if not job.reference_images:
        return None
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in job.reference_images]


def _finished(applied: Recipe, recipe: Recipe, scores: Scores, job: TrialJob, n: int) -> Recipe:
    from compress.recipe import Provenance
    from compress.versions import library_versions

    provenance = Provenance(
        source_model=job.model,
        run_id=job.run_id,
        trial_id=f"{n:04d}",
        versions=library_versions(),
    )
    return applied.model_copy(
        update={
            "name": recipe.name,
            "description": recipe.description,
            "scores": scores,
            "provenance": provenance,
        }
    )

"""`compress search`: a Ray Tune Tuner with OptunaSearch over two objectives, resumable."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compress.errors import CompressError
from compress.fs import write_atomic
from compress.search.compose import compositions
from compress.search.config import SearchConfig, save_config
from compress.search.ledger import (
    MODEL_FILE,
    SEARCH_FILE,
    TrialRecord,
    mark_interrupted,
    read_json,
    read_records,
    write_json,
)
from compress.search.space import SearchSpace

FINISHED = ("complete", "stopped", "failed")


@contextlib.contextmanager
def ray_session(address: str | None, verbose: bool = False) -> Iterator[None]:
    """Join the cluster at `address`, or start a private local Ray (never an unrelated one)."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # plain status output; we show our own
    # Ray runs workers at niceness 15, so any other process on the node starves the trials; in
    # a private local Ray the trials are the job (a joined cluster keeps its own setting).
    os.environ.setdefault("RAY_worker_niceness", "0")
    if not verbose:  # trial errors go to the ledger and one console line, not a traceback
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(
                address=address or "local",
                include_dashboard=False,
                log_to_driver=verbose,
                logging_level=logging.INFO if verbose else logging.ERROR,
            )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise CompressError(
                f"cannot reach the Ray cluster at {address!r}: {exc}; start it "
                "with `ray start --head` or drop --ray-address"
            ) from None
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def trial_resources(cfg: SearchConfig) -> dict[str, float]:
    """CPUs/GPUs per trial; --target-gpu adds Ray's `accelerator_type:<TYPE>` resource, which
    only nodes with that GPU have, so trials land on them alone."""
    res = {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}
    if cfg.target_gpu:
        res[f"accelerator_type:{cfg.target_gpu}"] = 0.001
    return res


def check_cluster(res: dict[str, float]) -> None:
    """Fail now, naming what exists, instead of leaving trials pending forever."""
    import ray

    total = ray.cluster_resources()
    have = {"cpu": total.get("CPU", 0.0), "gpu": total.get("GPU", 0.0)}
    for key, need in res.items():
        if need <= 0:
            continue
        got = have.get(key, total.get(key, 0.0))
        if got < need:
            kinds = sorted(k.split(":", 1)[1] for k in total if k.startswith("accelerator_type:"))
            hint = (
                f"; accelerator types in this cluster: {', '.join(kinds) or 'none'}"
                if key.startswith("accelerator_type:")
                else ""
            )
            raise CompressError(
                f"each trial needs {key}={need:g} but the Ray cluster has {got:g}{hint}"
            )


def pin_model_weights(run: Path, model: str) -> None:
    """Record the model's weights digest in a new run; on resume, refuse weights that changed,
    which would mix trials scored on two different models in one front."""
    from compress.models.loading import weights_digest

    path, digest = run / MODEL_FILE, weights_digest(model)
    if path.is_file():
        started = read_json(path).get("weights_sha256")
        if started != digest:
            raise CompressError(
                f"the weights of {model} changed since {run} started (sha256 {started} then, "
                f"{digest} now); restore them to resume, or start a new search with --out"
            )
        return
    write_json(path, {"model": model, "weights_sha256": digest})


def check_data(data: str | None, prompts: str | None) -> None:
    """The training data every trial will read: an image folder with captions, or a prompts
    file; checked here so that a wrong path fails in seconds, not inside every trial."""
    if data is not None:
        from compress.train.data import read_image_folder

        read_image_folder(Path(data))
    if prompts is not None:
        path = Path(prompts)
        try:
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        except OSError as exc:
            raise CompressError(f"--prompts {path} is not readable: {exc}") from None
        if not lines:
            raise CompressError(f"--prompts {path} holds no prompts (one per line)")


def run_search(
    cfg: SearchConfig,
    space: SearchSpace,
    *,
    resume: bool = False,
    console: Any = None,
    verbose: bool = False,
    points: list[dict[str, Any]] | None = None,
    trainable: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a search into cfg.out; return the summary (front, hypervolume...).

    `points` (knob values) are evaluated first, in order (Optuna enqueues them), e.g. a grid.
    `trainable` replaces the trial function (`run_trial(config, job=...)`): the scheduling
    simulation runs the real driver with trials that only sleep (scripts/simulate_search.py).
    """
    from compress.models.loading import resolve
    from compress.search.baseline import ensure_baseline
    from compress.search.results import finalize

    run = cfg.run.resolve()
    if not resume and (run / SEARCH_FILE).exists():
        raise CompressError(
            f"{run} already holds a search; continue it with --resume {cfg.out} "
            "or choose another --out"
        )
    resolve(cfg.model)  # a missing model fails here, not inside a Ray worker
    cfg.baseline_settings()  # invalid evaluation settings fail here, naming the field
    check_data(cfg.data, cfg.prompts)  # unreadable training data fails before any trial
    trackers = _trackers(cfg, run, console)  # a missing package or bad URI: before search.json
    run.mkdir(parents=True, exist_ok=True)
    pin_model_weights(run, cfg.model)  # before anything of a resumed run is rewritten
    save_config(cfg)
    if not (run / "space.yaml").exists():
        write_atomic(
            run / "space.yaml", yaml.safe_dump(space.spec.model_dump(mode="json"), sort_keys=False)
        )
    resources = trial_resources(cfg)
    times = {"start": time.time()}
    deadline = time.time() + cfg.time_budget if cfg.time_budget else None
    t0 = time.perf_counter()
    with ray_session(cfg.ray_address, verbose):
        times["ray_init_s"] = time.perf_counter() - t0
        check_cluster(resources)
        t0 = time.perf_counter()
        with _status(console, "evaluating the uncompressed baseline"):
            baseline = ensure_baseline(
                run, cfg.model, cfg.baseline_settings(), cfg.dtype, resources, cfg.metric_options
            )
        times["baseline_s"] = time.perf_counter() - t0
        mark_interrupted(run)
        records = read_records(run)
        # One Tuner for the whole search: the start points first; once they have all finished,
        # the unions of those that were faster (when the space composes); the two-level sampler
        # fills every free worker meanwhile and after (compress.search.twolevel).
        queued = [(p, "start") for p in [*start_points(space, records), *(points or [])]]
        remaining = cfg.trials - sum(r.state in FINISHED for r in records)
        if remaining > 0:
            t0 = time.perf_counter()
            session = Session(
                run, records, remaining, resources, baseline, queued, deadline, trackers
            )
            _tune(cfg, space, session, console=console, verbose=verbose, trainable=trainable)
            launched = len(read_records(run)) - len(records)
            times |= {
                "tune_s": time.perf_counter() - t0,
                "trials": launched,
                "max_concurrent": cfg.max_concurrent,
            }
    _log_times(run, times)
    return finalize(run)


def start_points(space: SearchSpace, records: list[TrialRecord]) -> list[dict[str, Any]]:
    """The space's start points that no trial of the ledger has finished (a resumed search does
    not run them twice, and runs again one that an interruption cut short)."""
    done = [r.params for r in records if r.state in FINISHED]
    return [p for p in space.spec.search.start if p not in done]


def _trackers(cfg: SearchConfig, run: Path, console: Any) -> list[Any]:
    """The experiment trackers' Ray callbacks (--track); one console line says where each writes."""
    if not cfg.track:
        return []
    from compress.search.tracking import describe, tracking_callbacks

    callbacks = tracking_callbacks(cfg.track, run, cfg.track_uri)
    if console is not None:
        console.print(f"tracking: {'; '.join(describe(callbacks))}", highlight=False)
    return callbacks


def _log_times(run: Path, times: dict[str, Any]) -> None:
    """Append this session's wall times (Ray start, baseline, tuning) to RUN/timings.json."""
    path = run / "timings.json"
    past = read_json(path) if path.is_file() else []
    write_json(path, [*past, times])


@contextlib.contextmanager
def _status(console: Any, what: str) -> Iterator[None]:
    if console is None:
        yield
        return
    with console.status(what):
        yield


@dataclass
class Session:
    """What one Tuner run of a search starts from: the run folder's ledger, the trials and time
    left, the resources a trial takes, the baseline's scores and the points queued first."""

    run: Path
    records: list[TrialRecord]
    remaining: int  # trials
    resources: dict[str, float]
    baseline: dict[str, Any]
    queue: list[tuple[dict[str, Any], str]]  # (knob values, origin)
    deadline: float | None  # time.time() at which the budget ends
    trackers: list[Any] = field(default_factory=list)  # --track: Ray logger callbacks


def _tune(
    cfg: SearchConfig,
    space: SearchSpace,
    session: Session,
    *,
    console: Any,
    verbose: bool,
    trainable: Callable[..., None] | None = None,
) -> None:
    from ray import tune

    from compress.search.baseline import reference_images
    from compress.search.cache import data_identity
    from compress.search.levels import split_levels
    from compress.search.progress import ProgressCallback
    from compress.search.study import make_sampler
    from compress.search.trial import TrialJob, run_trial
    from compress.search.tuning import (
        BudgetLimiter,
        LedgerCallback,
        Limits,
        RungScheduler,
        rung_points,
    )
    from compress.search.twolevel import TwoLevelSearch

    run, records, remaining = session.run, session.records, session.remaining
    resources, baseline = session.resources, session.baseline
    points, deadline = session.queue, session.deadline

    limits = Limits(cfg.max_latency, cfg.min_quality, cfg.max_memory)
    compose = space.spec.search.compose
    search = BudgetLimiter(
        TwoLevelSearch(
            space,
            split_levels(space),
            compose=(lambda recs: compositions(space, recs)) if compose else None,
            # a suffix study has few trials: a short random start before TPE models it
            make_sampler=lambda i, prefix: make_sampler(
                cfg.sampler, cfg.trials if prefix else 15, cfg.seed + i
            ),
            records=records,
            baseline_quality=baseline["quality"],
            limits=limits,
            queue=points,
            deadline=deadline,
            training_prior_s=cfg.time_budget / 4 if cfg.time_budget else 3600.0,
            seed=cfg.seed,
        ),
        max_concurrent=cfg.max_concurrent,
        deadline=deadline,
    )
    st = space.spec.staged
    settings = cfg.eval_settings()
    full_prompts = settings.num_prompts
    staged = cfg.staged and st.enabled and (full_prompts is None or st.prompts < full_prompts)
    done = [r for r in records if r.state in FINISHED]
    scheduler = RungScheduler(
        rung_points(done, space.spec.minimises_memory),
        limits,
        quality_margin=st.quality_margin,
        latency_tolerance=st.latency_tolerance,
        deadline=deadline,
        memory=space.spec.minimises_memory,
    )
    job = TrialJob(
        run=str(run),
        run_id=run.name,
        model=cfg.model,
        space=space.spec.model_dump(mode="json"),
        space_source=space.source,
        settings=settings,
        baseline_settings=cfg.baseline_settings(),
        stage_prompts=st.prompts if staged else None,
        rungs=list(st.rungs) if cfg.staged and st.enabled else [1.0],
        rounds=max(2, settings.timed_runs),
        dtype=cfg.dtype,
        reference_images=reference_images(run) if cfg.metric == "fidelity" else [],
        metric_options=cfg.metric_options,
        cpus=cfg.cpus_per_trial,
        gpus=cfg.gpus_per_trial,
        max_concurrent=cfg.max_concurrent,
        cache_dir=str(cfg.cache_dir.resolve()),
        data=str(Path(cfg.data).resolve()) if cfg.data else None,
        prompts_file=str(Path(cfg.prompts).resolve()) if cfg.prompts else None,
        weights=read_json(run / MODEL_FILE).get("weights_sha256") or cfg.model,
        data_identity=data_identity(cfg.data, cfg.prompts),
    )
    callbacks: list[Any] = []
    progress = None
    if console is not None:
        progress = ProgressCallback(console, cfg.trials, done, baseline["quality"])
        callbacks.append(progress)
    callbacks.insert(0, LedgerCallback(run, limits, progress.record if progress else None))
    callbacks.extend(session.trackers)  # after the ledger: a trial's folder is complete
    part = sum(1 for _ in (run / "ray").glob("part*")) if (run / "ray").is_dir() else 0
    trial_fn = tune.with_parameters(trainable or run_trial, job=job)
    trainable = tune.with_resources(trial_fn, resources)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search, scheduler=scheduler, num_samples=remaining, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name=f"part{part}",
            storage_path=str(run / "ray"),
            callbacks=callbacks,
            verbose=2 if verbose else 0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    tuner.fit()  # trial errors are recorded by LedgerCallback; fit itself does not raise on them

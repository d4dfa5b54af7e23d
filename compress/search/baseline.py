"""The uncompressed model, evaluated once per run (as a Ray task on trial-like resources)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.evaluate.settings import EvalSettings
from compress.search.ledger import read_json, write_json

BASELINE = "baseline"


def baseline_dir(run: Path) -> Path:
    return run / BASELINE


def load_baseline(run: Path) -> dict[str, Any] | None:
    path = baseline_dir(run) / "scores.json"
    return read_json(path) if path.is_file() else None


def reference_images(run: Path) -> list[str]:
    return sorted(str(p) for p in (baseline_dir(run) / "images").glob("[0-9]*.png"))


def evaluate_baseline(
    run: str, model: str, settings: EvalSettings, dtype: str | None, options: dict[str, Any]
) -> dict:
    """Score the model as loaded (its own scheduler and call defaults) and save its images.
    Untimed: every trial times its candidate against this model itself, paired."""
    import ray

    from compress._quiet import import_heavy
    from compress.artifact import load_model
    from compress.evaluate import evaluate
    from compress.evaluate import reference_images as make_references
    from compress.search.staging import check_finite, metric_for
    from compress.search.trial import save_images

    import_heavy()
    t0 = time.perf_counter()
    pipe = load_model(model, device=settings.device, dtype=dtype)
    es = settings
    metric = metric_for(es, options)
    # A metric that compares with the uncompressed model (fidelity) compares it with itself here.
    refs = (
        make_references(pipe, es, metric=metric)
        if getattr(metric, "needs_reference", False)
        else None
    )
    if refs is None:  # the process's one-time allocations fall here, not in its peak memory
        warm_up(pipe, es, metric)
    score = evaluate(pipe, es, reference_images=refs, metric=metric, timed=False)
    check_finite(score, "the uncompressed model")
    save_images(score.images, baseline_dir(Path(run)) / "images")
    data = {
        "quality": score.quality,
        "scores": score.to_recipe_scores().model_dump(mode="json"),
        "prompts": list(score.prompts),
        "node": ray.get_runtime_context().get_node_id(),
        "seconds": time.perf_counter() - t0,
    }
    write_json(baseline_dir(Path(run)) / "scores.json", data)
    return data


def warm_up(pipe: Any, settings: EvalSettings, metric: Any) -> None:
    """One batch before scoring: a trial has timed its candidate before it measures the peak
    memory of sampling, so the baseline's peak leaves out the same first-call allocations
    (thread pools, kernel workspaces)."""
    from compress.evaluate import generate_images, place

    prompts, seeds = metric.prompts()
    n = settings.batch_size
    place(pipe, settings)
    generate_images(pipe, prompts[:n], [s + settings.seed for s in seeds[:n]], settings)


def ensure_baseline(
    run: Path,
    model: str,
    settings: EvalSettings,
    dtype: str | None,
    resources: dict[str, float],
    options: dict[str, Any],
) -> dict[str, Any]:
    """Reuse the run's baseline if it exists; otherwise evaluate it on a Ray worker."""
    found = load_baseline(run)
    if found is not None:
        return found
    import ray

    custom = {k: v for k, v in resources.items() if k not in ("cpu", "gpu")}
    task = ray.remote(
        num_cpus=resources.get("cpu", 1),
        num_gpus=resources.get("gpu", 0),
        resources=custom or None,
        max_retries=0,
    )(evaluate_baseline)
    try:
        return ray.get(task.remote(str(run), model, settings, dtype, options))
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if exc.cause is not None else exc
        raise CompressError(
            f"evaluating the uncompressed model failed: {type(cause).__name__}: {cause}"
        ) from None

"""The work behind `compress bench` and `compress eval` (the CLI only parses options)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from compress.errors import CompressError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from rich.console import Console

    from compress.evaluate.settings import EvalSettings

# EvalSettings field -> command-line flag, for error messages.
_FLAGS = {
    "guidance_scale": "--guidance",
    "timed_runs": "--runs",
    "num_prompts": "--num-prompts",
    "batch_size": "--batch-size",
}


def make_settings(**fields: Any) -> EvalSettings:
    """EvalSettings from CLI values; a bad value is one readable line naming the flag."""
    from compress.evaluate.settings import EvalSettings

    try:
        return EvalSettings(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "settings"
            flag = _FLAGS.get(field, "--" + field.replace("_", "-"))
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {flag}: {msg} (got {err.get('input')!r})")
        raise CompressError("invalid evaluation settings:\n" + "\n".join(lines)) from None


def load_for(model: str | None, arch: str | None, settings: EvalSettings) -> DiffusionPipeline:
    """A checkpoint (`--model`) or a full-size random-weight architecture (`--arch`), placed."""
    if (model is None) == (arch is None):
        from compress.models.archs import ARCHS

        raise CompressError(
            "give exactly one of --model (miniature, a folder or a hub id) and "
            f"--arch ({', '.join(ARCHS)})"
        )
    if arch is not None:
        from compress.evaluate.run import check_device
        from compress.models.archs import build_arch_pipeline

        check_device(settings.device)
        return build_arch_pipeline(arch, device=settings.device, dtype=settings.dtype)
    from compress.artifact import load_model
    from compress.evaluate.run import place

    return place(load_model(model, dtype=settings.dtype), settings)


def run_bench(
    console: Console, *, model: str | None, arch: str | None, json_out: Path | None, **fields: Any
) -> Path:
    """Measure latency, print the table, write the JSON; returns the JSON path."""
    from compress.evaluate.latency import measure_latency
    from compress.evaluate.report import bench_payload, default_json_path, latency_table, write_json

    settings = make_settings(**fields)
    label = model or arch or ""
    with console.status(f"building {arch} (random weights)" if arch else f"loading {model}"):
        pipe = load_for(model, arch, settings)
    runs = f"{settings.warmup} warm-up + {settings.timed_runs} timed runs"
    with console.status(f"timing {label} on {settings.device}: {runs}"):
        result = measure_latency(pipe, settings)
    console.print(latency_table(result, f"latency: {label}"))
    path = json_out or default_json_path("bench", label, settings.device)
    write_json(path, bench_payload(result, {"model": model, "arch": arch}))
    console.print(f"[green]wrote[/green] {path}")
    return path


def run_eval(
    console: Console,
    *,
    model: str,
    reference: str | None,
    weights: str | None,
    prompts: str | None,
    images_dir: Path | None,
    json_out: Path | None,
    **fields: Any,
) -> Path:
    """Latency and quality with one metric; prints a table, writes JSON (and images if asked)."""
    from compress.evaluate.quality import get_metric
    from compress.evaluate.report import default_json_path, eval_payload, score_table, write_json
    from compress.evaluate.run import evaluate, reference_images

    settings = make_settings(**fields)
    metric = get_metric(settings.metric, device=settings.device, weights=weights, prompts=prompts)
    if getattr(metric, "needs_reference", False) and reference is None:
        raise CompressError(
            f"--metric {metric.name} needs --reference MODEL: the uncompressed "
            "pipeline whose images the model's are compared with"
        )
    refs = None
    if reference is not None:
        with console.status(f"generating reference images with {reference}"):
            refs = reference_images(load_for(reference, None, settings), settings, metric=metric)
    with console.status(f"loading {model}"):
        pipe = load_for(model, None, settings)
    with console.status(f"evaluating {model}: latency, then {metric.name} over its prompts"):
        score = evaluate(pipe, settings, reference_images=refs, metric=metric)
    console.print(score_table(score, f"{metric.name}: {model}"))
    if images_dir is not None:
        images_dir.mkdir(parents=True, exist_ok=True)
        for i, (img, seed) in enumerate(zip(score.images, score.seeds, strict=True)):
            img.save(images_dir / f"{i:04d}_seed{seed}.png")
        console.print(f"[green]saved[/green] {len(score.images)} images to {images_dir}")
    path = json_out or default_json_path("eval", model, settings.device)
    write_json(path, eval_payload(score, {"model": model, "reference": reference}))
    console.print(f"[green]wrote[/green] {path}")
    return path

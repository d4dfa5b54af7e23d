"""evaluate(pipe, settings) -> Score: latency on the device, then quality on fixed prompts/seeds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.evaluate.latency import call_kwargs, measure_latency
from compress.evaluate.settings import EvalSettings, Score
from compress.models.denoiser import denoiser

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from compress.evaluate.quality import Metric


def check_device(name: str) -> None:
    """Fail early, in one line, when the device asked for does not exist on this machine."""
    import torch

    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CompressError(f"device {name} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CompressError(f"device {name}: only {torch.cuda.device_count()} GPU(s) here")


def place(pipe: DiffusionPipeline, settings: EvalSettings) -> DiffusionPipeline:
    """Move the pipeline to the settings' device and dtype (dtype None: keep the pipeline's)."""
    import torch

    from compress.models.loading import parse_dtype

    check_device(settings.device)
    device = torch.device(settings.device)
    dtype = parse_dtype(settings.dtype)
    net = denoiser(pipe)
    if net.device.type == "meta":
        raise CompressError(
            "the pipeline is on the meta device (structure only); build it on "
            "the target device to measure it"
        )
    if pipe._execution_device != device or (dtype is not None and net.dtype != dtype):
        pipe.to(device=device, dtype=dtype)
    return pipe


def generate_images(
    pipe: DiffusionPipeline, prompts: list[str], seeds: list[int], settings: EvalSettings
) -> list[Any]:
    """One image per prompt with its seed, in batches of `settings.batch_size`."""
    from compress.evaluate.timing import cpu_threads
    from compress.generate import generate

    kwargs = call_kwargs(pipe, settings)
    images: list[Any] = []
    with cpu_threads(settings.threads):
        for i in range(0, len(prompts), settings.batch_size):
            j = i + settings.batch_size
            images += generate(pipe, prompts[i:j], seeds[i:j], **kwargs)
    return images


def _prompts(metric: Metric, settings: EvalSettings) -> tuple[list[str], list[int]]:
    prompts, seeds = metric.prompts(settings.num_prompts)
    return prompts, [s + settings.seed for s in seeds]


def reference_images(
    pipe: DiffusionPipeline, settings: EvalSettings, *, metric: Metric | None = None
) -> list[Any]:
    """The (uncompressed) pipeline's images for the metric's prompts and seeds, for fidelity."""
    from compress.evaluate.quality import get_metric

    metric = metric or get_metric(settings.metric, device=settings.device)
    prompts, seeds = _prompts(metric, settings)
    place(pipe, settings)
    return generate_images(pipe, prompts, seeds, settings)


def evaluate(
    pipe: DiffusionPipeline,
    settings: EvalSettings,
    *,
    reference_images: list[Any] | None = None,
    metric: Metric | None = None,
    timed: bool = True,
) -> Score:
    """Latency (median of timed runs) and quality (the settings' metric) of `pipe`.

    `metric` overrides the registry's default instance of `settings.metric` (e.g. one built with
    local weight paths); `reference_images` are the uncompressed pipeline's images, for fidelity.
    `timed=False` scores quality only (a search trial times its candidate paired instead).
    """
    from compress.evaluate.latency import resolved_settings
    from compress.evaluate.memory import sampling_peak
    from compress.evaluate.quality import get_metric
    from compress.evaluate.timing import cpu_threads

    if metric is None:
        metric = get_metric(settings.metric, device=settings.device)
    elif metric.name != settings.metric:
        raise CompressError(f"settings name metric {settings.metric!r} but {metric.name!r} given")
    if getattr(metric, "needs_reference", False) and reference_images is None:
        raise CompressError(
            f"metric {metric.name} compares with the uncompressed pipeline: pass "
            "reference_images=reference_images(base_pipe, settings) (on the command line: "
            "--reference MODEL)"
        )
    prompts, seeds = _prompts(metric, settings)
    version = metric.version  # fail on missing metric files before minutes of generation
    place(pipe, settings)
    latency = measure_latency(pipe, settings, prompts=prompts) if timed else None
    with sampling_peak(pipe, settings.device) as memory:  # at the evaluation's batch size
        images = generate_images(pipe, prompts, seeds, settings)
    value, parts = metric.score(images, prompts, reference_images=reference_images)
    if latency is None:
        with cpu_threads(settings.threads) as threads:
            resolved = resolved_settings(pipe, settings, threads)
    return Score(
        latency_ms=latency.median_ms if latency else None,
        latency_spread_ms=latency.spread_ms if latency else None,
        components_ms=latency.components_ms if latency else {},
        peak_memory_mb=memory.mb,
        peak_memory=memory.describe(),
        quality=value,
        quality_metric=metric.name,
        quality_metric_version=version,
        quality_parts=parts,
        higher_is_better=metric.higher_is_better,
        settings=latency.settings if latency else resolved,
        prompts=prompts,
        seeds=seeds,
        images=images,
        latency=latency,
    )

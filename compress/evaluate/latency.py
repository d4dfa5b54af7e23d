"""End-to-end and per-component latency of a pipeline: warm-up, then N timed runs on the device."""

from __future__ import annotations

import contextlib
import inspect
import platform
import statistics
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.evaluate.settings import EvalSettings, LatencyResult
from compress.models.denoiser import denoiser

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def iqr(values: list[float]) -> float:
    """Interquartile range (linear interpolation between order statistics); 0 for one value."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def call_kwargs(pipe: DiffusionPipeline, settings: EvalSettings) -> dict[str, Any]:
    """Resolution, steps and guidance to call the pipeline with: settings, else its own defaults."""
    from compress.generate import call_defaults

    recorded = call_defaults(pipe)
    params = inspect.signature(pipe.__call__).parameters

    def pick(key: str, given: Any) -> Any:
        if given is not None:
            return given
        return recorded.get(key, params[key].default)

    factor = pipe.vae_scale_factor
    size = settings.resolution or denoiser(pipe).config.sample_size * factor
    if size % 8:
        raise CompressError(f"resolution {size} must be a multiple of 8")
    return {
        "height": size,
        "width": size,
        "num_inference_steps": pick("num_inference_steps", settings.steps),
        "guidance_scale": float(pick("guidance_scale", settings.guidance_scale)),
    }


def resolved_settings(pipe: DiffusionPipeline, settings: EvalSettings, threads: int) -> dict:
    """The settings as actually run: no None left (dtype, resolution, steps, guidance, threads)."""
    kw = call_kwargs(pipe, settings)
    dtype = str(denoiser(pipe).dtype).removeprefix("torch.")
    return settings.model_dump() | {
        "dtype": dtype,
        "resolution": kw["height"],
        "steps": kw["num_inference_steps"],
        "guidance_scale": kw["guidance_scale"],
        "threads": threads,
    }


def device_name(device: Any) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    import torch

    from compress.versions import library_versions

    out = library_versions() | {"python": platform.python_version()}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


class Runner:
    """One pipeline ready to be timed: its call, batch, clock and component timer.

    Used as a context manager (the timers and any compile wrapper stay installed for its span),
    so that several pipelines can be timed in alternation by `compress.evaluate.paired`.
    """

    def __init__(
        self, pipe: DiffusionPipeline, settings: EvalSettings, prompts: list[str] | None = None
    ) -> None:
        from compress.evaluate.prompts import GENERAL_PROMPTS
        from compress.evaluate.timing import Clock
        from compress.models.runtime import is_compiled

        self.compiles = settings.compile or is_compiled(pipe)  # here or by a compile transform
        if self.compiles and settings.warmup < 1:
            raise CompressError(
                "compile needs at least one warm-up run (compilation happens in it)"
            )
        self.pipe, self.settings = pipe, settings
        self.kwargs = call_kwargs(pipe, settings)
        pool = prompts or GENERAL_PROMPTS
        self.batch = [pool[i % len(pool)] for i in range(settings.batch_size)]
        self.device = pipe._execution_device
        self.clock = Clock(self.device)
        self._stack: contextlib.ExitStack | None = None
        self.timer: Any = None
        self.threads = 0

    def __enter__(self) -> Runner:
        from compress.evaluate.timing import ComponentTimer, compiled, cpu_threads

        stack = contextlib.ExitStack()
        self.threads = stack.enter_context(cpu_threads(self.settings.threads))
        stack.enter_context(compiled(self.pipe, self.settings.compile))
        self.timer = stack.enter_context(ComponentTimer(self.pipe, self.clock))
        self._stack = stack
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stack is not None
        self._stack.close()
        self._stack = None

    def run(self) -> tuple[float, dict[str, float]]:
        """One end-to-end call: (ms, per-component ms with `other` the rest of the run)."""
        import torch

        n = len(self.batch)
        gens = [torch.Generator("cpu").manual_seed(self.settings.seed + i) for i in range(n)]
        self.timer.reset()
        self.clock.sync()
        start = self.clock.mark()
        with torch.inference_mode():
            self.pipe(prompt=self.batch, generator=gens, output_type="pil", **self.kwargs)
        end = self.clock.mark()
        self.clock.sync()
        total = self.clock.ms(start, end)
        parts = self.timer.totals_ms()
        parts["other"] = max(total - sum(parts.values()), 0.0)
        return total, parts

    def resolved(self) -> dict[str, Any]:
        return resolved_settings(self.pipe, self.settings, self.threads)


def measure_latency(
    pipe: DiffusionPipeline, settings: EvalSettings, prompts: list[str] | None = None
) -> LatencyResult:
    """Median and spread of `settings.timed_runs` end-to-end calls after `settings.warmup` ones."""
    import torch

    with Runner(pipe, settings, prompts) as runner:
        warm = [runner.run()[0] for _ in range(settings.warmup)]
        if runner.clock.cuda:
            torch.cuda.reset_peak_memory_stats(runner.device)
        runs: list[float] = []
        parts: dict[str, list[float]] = {}
        for _ in range(settings.timed_runs):
            total, totals = runner.run()
            runs.append(total)
            for k, v in totals.items():
                parts.setdefault(k, []).append(v)
        calls = runner.timer.calls()
        settings_run = runner.resolved()
    device = runner.device
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if runner.clock.cuda else None
    median = statistics.median(runs)
    return LatencyResult(
        median_ms=median,
        spread_ms=iqr(runs),
        runs_ms=runs,
        components_ms={k: statistics.median(v) for k, v in parts.items()},
        component_runs_ms=parts,
        calls_per_run=calls,
        warmup_ms=warm,
        compile_ms=max(warm[0] - median, 0.0) if runner.compiles else None,
        peak_memory_mb=peak,
        device=str(device),
        device_name=device_name(device),
        threads=runner.threads,
        settings=settings_run,
        versions=versions(),
    )

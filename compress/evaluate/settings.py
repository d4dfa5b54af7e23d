"""EvalSettings (how a candidate is measured) and Score (what was measured): plain data."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

METRICS = ("miniature", "hpsv2", "pickscore", "clip", "fidelity")


class Scores(BaseModel):
    """Measured objectives and the settings they were measured under (a recipe keeps them)."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float | None = None
    latency_spread_ms: float | None = None
    peak_memory_mb: float | None = None
    quality: float | None = None
    quality_metric: str | None = None  # a metric's own name, e.g. "miniature-judge", "hpsv2.1"
    quality_metric_version: str | None = None
    quality_parts: dict[str, float] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)  # device, dtype, resolution, steps...
    flags: list[str] = Field(default_factory=list)  # e.g. "quantized-but-not-faster"
    # Paired timing (compress.evaluate.paired): median per-round ratio of the uncompressed
    # baseline's time to this candidate's, timed in alternation in one process, with its 95%
    # interval; `reference` says how the baseline was called and how many rounds ran.
    speedup: float | None = None
    speedup_ci: list[float] | None = None
    reference: dict[str, Any] = Field(default_factory=dict)
    parent_speedup: float | None = None  # against the unquantized parent (quantized candidates)
    parent_speedup_ci: list[float] | None = None


class LatencyResult(BaseModel):
    """Every timing of one measurement, with the device and software it was taken on."""

    median_ms: float
    spread_ms: float  # interquartile range of `runs_ms`
    runs_ms: list[float]
    components_ms: dict[str, float]  # per-component medians; "other" is the rest of a run
    component_runs_ms: dict[str, list[float]]
    calls_per_run: dict[str, int]  # e.g. denoiser: steps (one batched call per step with CFG)
    warmup_ms: list[float] = Field(default_factory=list)
    compile_ms: float | None = None  # first (compiling) run minus the median; None without compile
    peak_memory_mb: float | None = None
    device: str
    device_name: str
    threads: int
    settings: dict[str, Any]
    versions: dict[str, str]

    def agrees_with(self, other: LatencyResult) -> bool:
        """True when the medians differ by no more than the two spreads together."""
        return abs(self.median_ms - other.median_ms) <= self.spread_ms + other.spread_ms


class EvalSettings(BaseModel):
    """Device, sampling and measurement settings; recorded with every score.

    `None` means "the pipeline's own": its dtype, its default resolution, and the steps and guidance
    recorded by a sampler transform (`compress.generate.call_defaults`) or else diffusers' defaults.
    """

    model_config = ConfigDict(extra="forbid")

    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    resolution: int | None = Field(None, ge=8, le=4096)
    batch_size: int = Field(1, ge=1)
    steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    metric: str = "miniature"
    num_prompts: int | None = Field(None, ge=1)  # first N prompts of the metric's set
    timed_runs: int = Field(5, ge=1)
    warmup: int = Field(1, ge=0)
    compile: bool = False
    threads: int | None = Field(None, ge=1)  # CPU threads (torch.set_num_threads); None = as set
    seed: int = Field(0, ge=0)  # added to the metric's fixed seeds

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if value not in METRICS:
            raise ValueError(f"unknown metric {value!r}; choose one of {', '.join(METRICS)}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        kind, _, index = value.partition(":")
        if kind not in ("cpu", "cuda", "mps", "xpu") or (index and not index.isdigit()):
            raise ValueError(f"device {value!r} is not one of cpu, cuda, cuda:N, mps, xpu")
        return value


class Score(BaseModel):
    """Latency and quality of one pipeline under one EvalSettings.

    `latency_ms` is the median end-to-end time of the timed runs; `latency_spread_ms` is their
    interquartile range (75th minus 25th percentile). `components_ms` holds per-component medians:
    text_encoder (all encoders), denoiser (every UNet call of the loop together), vae_decode, and
    other (scheduler, pre- and post-processing). `peak_memory_mb` is the peak memory of generating
    the scored images at the settings' batch size: the pipeline's tensors on the device plus the
    high-water mark sampling added (CUDA allocator peak, or the resident set on CPU); None where
    the device has no counter (compress.evaluate.memory). `peak_memory` says how it was measured.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    latency_ms: float | None = None  # None: scored without timing (see `evaluate(timed=...)`)
    latency_spread_ms: float | None = None
    components_ms: dict[str, float] = Field(default_factory=dict)
    peak_memory_mb: float | None = None  # MiB
    peak_memory: str = ""  # how peak_memory_mb was measured, or why not
    quality: float
    quality_metric: str
    quality_metric_version: str
    quality_parts: dict[str, float] = Field(default_factory=dict)
    higher_is_better: bool = True
    settings: dict[str, Any] = Field(default_factory=dict)  # resolved: no None left
    prompts: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    images: list[Any] = Field(default_factory=list, exclude=True)  # PIL images, kept for reports
    latency: LatencyResult | None = None  # every run, compile time, device and library versions

    def to_recipe_scores(self) -> Scores:
        return Scores(
            latency_ms=self.latency_ms,
            latency_spread_ms=self.latency_spread_ms,
            peak_memory_mb=self.peak_memory_mb,
            quality=self.quality,
            quality_metric=self.quality_metric,
            quality_metric_version=self.quality_metric_version,
            quality_parts=dict(self.quality_parts),
            settings=dict(self.settings),
        )

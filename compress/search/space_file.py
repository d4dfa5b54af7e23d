"""The YAML schema of a search space: knobs, transforms, search defaults, staged evaluation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compress.errors import CompressError


class SpaceError(CompressError):
    """A search space file is malformed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Knob(_Strict):
    """One searched value: the transform field it sets, its domain, and when it is searched."""

    sets: str | None = None  # "kind.field"; None: a switch that only appears in `when:`
    type: Literal["categorical", "int", "float"]
    choices: list[Any] | None = None
    # Categorical labels -> the structured field values they stand for (e.g. quantization rules),
    # since Optuna's choices must be plain scalars.
    values: dict[str, Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    when: dict[str, Any] = Field(default_factory=dict)  # knob -> value or list of values


class TransformEntry(_Strict):
    fixed: dict[str, Any] = Field(default_factory=dict)  # fields held constant
    when: dict[str, Any] = Field(default_factory=dict)  # included only when these knobs match


class SearchDefaults(_Strict):
    """Defaults for `compress search` options, so the space alone describes a runnable job."""

    model: str | None = None
    # The published architecture the space is sized for (sd15, sdxl, ...): what `--plan` counts
    # when no --model is given (compress.models.archs, built on the meta device).
    arch: str | None = None
    metric: str | None = None
    trials: int = Field(24, ge=1)
    sampler: Literal["nsga2", "tpe"] = "tpe"
    max_concurrent: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    seed: int = 0
    # Stop launching trials after this long (e.g. "12m", "8h"); running trials finish.
    time_budget: str | None = None
    # Knob values evaluated first, in order (Ray Tune's points_to_evaluate), e.g. each technique
    # alone at the settings its report found best; the sampler goes on from what they score.
    start: list[dict[str, Any]] = Field(default_factory=list)
    # After the start points, the union of every two that were faster than the baseline
    # (compress.search.compose), cheapest first; then the sampler.
    compose: bool = False


class Staged(_Strict):
    """Staged evaluation: score on `prompts` first; stop what the front clearly dominates.

    A candidate that trains is scored at each of `rungs` (fractions of its training budget)
    before the full prompt set, and compared only with others at the same rung.
    """

    enabled: bool = True
    prompts: int = Field(4, ge=1)
    rungs: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0], min_length=1)
    quality_margin: float = Field(0.0, ge=0)  # a front point must be this much better in quality
    latency_tolerance: float = Field(0.05, ge=0)  # ...and at most this fraction slower

    @field_validator("rungs")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in value):
            raise ValueError(f"rungs are fractions of the training budget in (0, 1], got {value}")
        return sorted(set(value) | {1.0})


class SensitivityFilter(_Strict):
    """Keep only the block-group formats a `compress sensitivity` table allows (see
    compress.search.space_sensitivity); formats the table did not measure stay."""

    table: str  # .csv or .json, relative to the space file
    max_drop: float = Field(ge=0)  # largest quality drop allowed, in the table's metric units


OBJECTIVES = ("latency", "quality", "memory")


class SpaceFile(_Strict):
    name: str
    description: str = ""
    # What the front trades: relative latency (minimised) and quality (maximised), always, in
    # that order; `memory` adds the peak memory of sampling (minimised) as a third.
    objectives: list[Literal["latency", "quality", "memory"]] = Field(
        default_factory=lambda: ["latency", "quality"]
    )
    search: SearchDefaults = Field(default_factory=SearchDefaults)
    evaluation: dict[str, Any] = Field(default_factory=dict)  # EvalSettings fields
    # EvalSettings for the uncompressed baseline only, e.g. the steps it is normally sampled with
    # when its folder records none (diffusers' call defaults would apply otherwise).
    baseline: dict[str, Any] = Field(default_factory=dict)
    staged: Staged = Field(default_factory=Staged)
    transforms: dict[str, TransformEntry] = Field(default_factory=dict)
    knobs: dict[str, Knob] = Field(min_length=1)
    sensitivity: SensitivityFilter | None = None

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str]) -> list[str]:
        if value not in (["latency", "quality"], list(OBJECTIVES)):
            raise ValueError(
                f"objectives {value} are not searchable; write [latency, quality] or "
                "[latency, quality, memory]"
            )
        return value

    @property
    def minimises_memory(self) -> bool:
        """Peak memory is the third objective of the searches over this space."""
        return "memory" in self.objectives

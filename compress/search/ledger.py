"""The run folder: one `trial.json` per finished trial (written last, atomically), the trials CSV.

Layout of RUN/:
  search.json          how the search was started (model, space, metric, settings, constraints)
  space.yaml           the search space as it was used
  baseline/            the uncompressed model's scores and images
  trials/NNNN/         config.json, recipe.yaml, images/, log.txt, trial.json (the ledger entry)
  cache/               the prefix cache (trained structure + training prefixes), unless --cache
  trials.csv           every trial in one table
  recipes/             the Pareto front as recipes
  summary.json         front, hypervolume, staged-evaluation savings, Ray overhead
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from compress.errors import CompressError
from compress.fs import write_atomic

State = Literal["complete", "stopped", "failed", "interrupted"]
SEARCH_FILE = "search.json"
MODEL_FILE = "model.json"  # the digest of the weights the run started with


class TrialResult(BaseModel):
    """What a trial reports at each stage (1: a rung or the stage prompts; 2: the full set), in
    one model: the trial writes it, Ray Tune carries it as a dict (`report()`), and the
    schedulers, the searcher and the ledger read it back (`of()`); a TrialRecord extends it."""

    model_config = ConfigDict(extra="ignore")  # Ray Tune adds keys of its own (time_total_s, ...)

    number: int | None = None
    stage: int = 0  # the last evaluation stage reached (1: stage prompts, 2: full set)
    training_fraction: float | None = None  # of its training budget (None: trains nothing)
    prompts: int | None = None  # how many prompts the quality was scored on
    relative_latency: float | None = None  # 1 / speed-up
    # Paired timing in the trial's own worker: the candidate's median (absolute, ms), the
    # uncompressed baseline's in the same rounds, and the speed-up (median per-round ratio) with
    # its 95% interval (order statistics); the parent's for a quantized candidate.
    latency_ms: float | None = None
    reference_latency_ms: float | None = None
    speedup: float | None = None
    speedup_ci: list[float] | None = None
    parent_speedup: float | None = None
    parent_speedup_ci: list[float] | None = None
    quality: float | None = None
    # MiB to generate the scored images at the evaluation batch: the candidate's tensors plus
    # sampling's high-water mark (compress.evaluate.memory); None where the device has no counter
    peak_memory_mb: float | None = None
    scores: dict[str, Any] = Field(default_factory=dict)  # compress.recipe.Scores of the last stage
    components_ms: dict[str, float] = Field(default_factory=dict)  # per-component latency
    reference_components_ms: dict[str, float] = Field(default_factory=dict)  # the baseline's
    # Each rung the trial was scored at on the stage prompts: training_fraction (None: trains
    # nothing), prompts, relative_latency, quality.
    rungs: list[dict[str, Any]] = Field(default_factory=list)
    training: bool = False  # has training transforms
    cache: dict[str, Any] = Field(default_factory=dict)  # prefix-cache hits and misses
    duplicate_of: int | None = None  # same knobs as this earlier trial; its scores were reused
    node: str | None = None
    times: dict[str, float] = Field(default_factory=dict)  # seconds: build, timing, trial, wall

    @classmethod
    def of(cls, reported: dict[str, Any] | None) -> TrialResult:
        """A result as Ray Tune hands it back (its own keys ignored)."""
        return cls.model_validate(reported or {})

    def report(self) -> dict[str, Any]:
        """The dict Ray Tune takes (`tune.report`)."""
        return self.model_dump(mode="json")

    @property
    def scored(self) -> bool:
        return self.stage in (1, 2)

    @property
    def speedup_low(self) -> float | None:
        return self.speedup_ci[0] if self.speedup_ci else None


class TrialRecord(TrialResult):
    """What the ledger keeps of one trial: its last result and what the driver knows of it."""

    model_config = ConfigDict(extra="forbid")

    number: int
    state: State
    params: dict[str, Any] = Field(default_factory=dict)
    recipe: str | None = None  # recipe name
    transforms: list[dict[str, Any]] = Field(default_factory=list)
    stopped_at: dict[str, Any] | None = None  # {prompts, training_fraction} of its last score
    constraints: dict[str, float] = Field(default_factory=dict)  # name -> value; > 0 violated
    error: str | None = None
    # who proposed it: a start point, a composition of two, the sampler's new prefix (it trains
    # or builds its structure), a suffix on a trained prefix, or a finishing variant
    # (compress.search.twolevel)
    origin: Literal["start", "composition", "prefix", "suffix", "finish"] | None = None
    why: str | None = None  # the two-level rule's choice: level, expected gain per second, reason
    parent: int | None = None  # a finishing variant: the trial whose candidate it finishes
    ray_trial_id: str | None = None

    @property
    def feasible(self) -> bool:
        return not any(v > 0 for v in self.constraints.values())

    @property
    def faster(self) -> bool:
        """True when the whole speed-up interval lies above 1: really faster than the baseline."""
        return self.speedup_ci is not None and self.speedup_ci[0] > 1.0

    @property
    def point(self) -> tuple[float, float] | None:
        """(relative latency = 1 / paired speed-up, quality): the two objectives."""
        if not self.speedup or self.quality is None:
            return None
        if not (math.isfinite(self.speedup) and math.isfinite(self.quality)):
            return None
        return (1.0 / self.speedup, self.quality)

    def objectives(self, memory: bool = False) -> tuple[float, ...] | None:
        """`point`, with the peak memory (MiB) third where memory is an objective."""
        point = self.point
        if not memory or point is None:
            return point
        if self.peak_memory_mb is None or not math.isfinite(self.peak_memory_mb):
            return None
        return (*point, self.peak_memory_mb)

    def result(self) -> TrialResult:
        """This trial's final result as a trial reports it (to serve a repeated point)."""
        data = self.model_dump(include=set(TrialResult.model_fields))
        stopped = self.stopped_at or {}
        data.update(  # a ledger written before these were kept gives them this way
            rungs=[],  # a repeat scored nothing itself
            relative_latency=1.0 / self.speedup if self.speedup else None,
            training_fraction=stopped.get("training_fraction"),
            prompts=stopped.get("prompts"),
        )
        return TrialResult.model_validate(data)


def trial_dir(run: Path, number: int) -> Path:
    return run / "trials" / f"{number:04d}"


def write_record(run: Path, record: TrialRecord) -> None:
    write_atomic(trial_dir(run, record.number) / "trial.json", record.model_dump_json(indent=2))


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CompressError(f"cannot read {path}: {exc}") from None


def read_records(run: Path) -> list[TrialRecord]:
    """Every finished trial, by number; a trial folder without trial.json did not finish."""
    records = []
    for path in sorted((run / "trials").glob("*/trial.json")):
        records.append(TrialRecord.model_validate_json(path.read_text()))
    return sorted(records, key=lambda r: r.number)


def mark_interrupted(run: Path) -> list[TrialRecord]:
    """Record trials that started but never finished (the search was stopped) as interrupted."""
    out = []
    for folder in sorted((run / "trials").glob("*")):
        if not folder.is_dir() or (folder / "trial.json").exists() or not folder.name.isdigit():
            continue
        config = folder / "config.json"
        params = json.loads(config.read_text()).get("params", {}) if config.is_file() else {}
        record = TrialRecord(
            number=int(folder.name),
            state="interrupted",
            params=params,
            error="the search stopped before this trial finished",
        )
        write_record(run, record)
        out.append(record)
    return out


def write_csv(run: Path, records: list[TrialRecord], front: set[int]) -> None:
    """trials.csv: one row per trial with its knobs, objectives, state and timings."""
    knobs = sorted({k for r in records for k in r.params})
    header = [
        "number",
        "state",
        "stage",
        "pareto",
        "feasible",
        "speedup",
        "speedup_low",
        "speedup_high",
        "latency_ms",
        "quality",
        "peak_memory_mb",
        "stopped_at_fraction",
        *knobs,
        "wall_s",
        "node",
        "error",
    ]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in records:
        w.writerow(
            [
                r.number,
                r.state,
                r.stage,
                r.number in front,
                r.feasible,
                r.speedup,
                *(r.speedup_ci or [None, None]),
                r.latency_ms,
                r.quality,
                r.peak_memory_mb,
                (r.stopped_at or {}).get("training_fraction"),
                *[r.params.get(k, "") for k in knobs],
                r.times.get("wall"),
                r.node,
                (r.error or "").splitlines()[0] if r.error else "",
            ]
        )
    write_atomic(run / "trials.csv", buf.getvalue())

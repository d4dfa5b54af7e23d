"""SearchConfig: every option of one search, resolved from the CLI and the space's defaults."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compress.errors import CompressError
from compress.evaluate.settings import EvalSettings
from compress.search.ledger import SEARCH_FILE, read_json, write_json
from compress.search.space import SearchSpace, load_space

TRACKERS = ("mlflow", "tensorboard", "wandb")  # --track

# Options fixed when a run starts; `--resume` may only add trials or change where Ray runs.
_FIXED_ON_RESUME = (
    "model",
    "space",
    "metric",
    "sampler",
    "max_latency",
    "min_quality",
    "max_memory",
    "target_gpu",
    "device",
    "dtype",
    "seed",
    "staged",
    "evaluation",
    "baseline",
    "metric_weights",
    "metric_prompts",
    "data",
    "prompts",
)


class SearchConfig(BaseModel):
    """One search: what to compress, over which space, scored how, on which resources."""

    model_config = ConfigDict(extra="forbid")

    model: str
    space: str  # path of the space file
    metric: str
    out: str
    trials: int = Field(ge=1)
    sampler: Literal["nsga2", "tpe"]
    max_concurrent: int = Field(ge=1)
    cpus_per_trial: float = Field(gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    target_gpu: str | None = None
    max_latency: float | None = Field(None, gt=0)  # ms
    min_quality: float | None = None
    max_memory: float | None = Field(None, gt=0)  # MiB, peak of sampling at the evaluation batch
    device: str = "cpu"
    dtype: str | None = None
    seed: int = 0
    staged: bool = True
    ray_address: str | None = None
    evaluation: dict[str, Any] = Field(default_factory=dict)  # EvalSettings fields
    baseline: dict[str, Any] = Field(default_factory=dict)  # ...overridden for the baseline
    metric_weights: str | None = None  # the metric's checkpoint (file, folder or hub id)
    metric_prompts: str | None = None  # the metric's prompt file or folder
    time_budget: float | None = Field(None, gt=0)  # seconds; then no new trial starts
    cache: str | None = None  # prefix cache folder (default RUN/cache)
    data: str | None = None  # training images with captions, for every trial
    prompts: str | None = None  # prompts file the teacher draws training images from
    track: list[str] = Field(default_factory=list)  # experiment trackers (compress.search.tracking)
    track_uri: str | None = None  # MLflow URI (default: MLFLOW_TRACKING_URI, else RUN/mlflow)

    @field_validator("track", mode="before")
    @classmethod
    def _trackers(cls, value: Any) -> list[str]:
        """`--track mlflow,tensorboard` as well as `--track mlflow --track tensorboard`."""
        items = [value] if isinstance(value, str) else list(value or [])
        names = list(dict.fromkeys(n.strip() for v in items for n in v.split(",") if n.strip()))
        unknown = [n for n in names if n not in TRACKERS]
        if unknown:
            raise ValueError(f"unknown tracker {unknown[0]!r}; choose from {', '.join(TRACKERS)}")
        return names

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache) if self.cache else self.run / "cache"

    @property
    def metric_options(self) -> dict[str, Any]:
        opts = {"weights": self.metric_weights, "prompts": self.metric_prompts}
        return {k: v for k, v in opts.items() if v is not None}

    @property
    def run(self) -> Path:
        return Path(self.out)

    def eval_settings(self) -> EvalSettings:
        """The full evaluation's settings (threads follow the CPUs per trial)."""
        threads = max(1, int(self.cpus_per_trial)) if self.device == "cpu" else None
        base = {"threads": threads} if threads else {}
        return _settings(
            {
                **base,
                **self.evaluation,
                "metric": self.metric,
                "device": self.device,
                **({"dtype": self.dtype} if self.dtype else {}),
            }
        )

    def baseline_settings(self) -> EvalSettings:
        """The uncompressed reference's: the full evaluation's, at the model's usual call."""
        return _settings({**self.eval_settings().model_dump(exclude_unset=True), **self.baseline})


def _settings(fields: dict[str, Any]) -> EvalSettings:
    from pydantic import ValidationError

    try:
        return EvalSettings(**fields)
    except ValidationError as exc:
        raise CompressError(f"invalid evaluation settings: {exc}") from None


def parse_duration(text: str | float | None) -> float | None:
    """Seconds from "90", "90s", "12m", "8h" or "1h30m"; None stays None."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    import re

    parts = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text
    )
    if not text.strip() or parts is None or not any(parts.groups()):
        raise CompressError(
            f"time budget {text!r} is not a duration; write e.g. 90s, 12m, 8h or 1h30m"
        )
    h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
    return h * 3600 + m * 60 + sec


def default_out(space: str) -> str:
    stem = Path(space).stem
    return str(Path("runs") / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def resolve_config(space: str | None = None, **given: Any) -> tuple[SearchConfig, SearchSpace]:
    """Options given on the command line (None = not given) over the space's `search:` defaults."""
    sp = load_space(space or "miniature")
    d = sp.spec.search
    opts = {k: v for k, v in given.items() if v is not None}
    model = opts.pop("model", d.model)
    metric = opts.pop("metric", d.metric or sp.spec.evaluation.get("metric"))
    if model is None:
        raise CompressError(f"search space {sp.source} names no model; pass --model")
    if Path(str(model)).expanduser().exists():  # a local folder: Ray's workers run elsewhere
        model = str(Path(str(model)).expanduser().resolve())
    if metric is None:
        raise CompressError(f"search space {sp.source} names no metric; pass --metric")
    gpus = opts.get("gpus_per_trial", 0.0)
    values = {
        "model": model,
        "space": sp.source,
        "metric": metric,
        "trials": d.trials,
        "sampler": d.sampler,
        "max_concurrent": d.max_concurrent,
        "cpus_per_trial": d.cpus_per_trial,
        "seed": d.seed,
        "device": "cuda" if gpus else "cpu",
        "evaluation": {k: v for k, v in sp.spec.evaluation.items() if k != "metric"},
        "baseline": dict(sp.spec.baseline),
        "time_budget": parse_duration(d.time_budget),
        **opts,
    }
    if "time_budget" in opts:
        values["time_budget"] = parse_duration(opts["time_budget"])
    values.setdefault("out", default_out(sp.source))
    return _validate(values), sp


def _validate(values: dict[str, Any]) -> SearchConfig:
    try:
        return SearchConfig.model_validate(values)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise CompressError("invalid search options:\n" + "\n".join(lines)) from None


def save_config(cfg: SearchConfig) -> None:
    write_json(cfg.run / SEARCH_FILE, cfg.model_dump(mode="json"))


def resume_config(run: str | Path, **given: Any) -> tuple[SearchConfig, SearchSpace]:
    """The config a run was started with; `trials`, `max_concurrent`, `ray_address` may change."""
    from compress.search.space import parse_space

    run = Path(run)
    path = run / SEARCH_FILE
    if not path.is_file():
        raise CompressError(
            f"{run} is not a search run folder (no {SEARCH_FILE}); "
            "pass the --out folder of an earlier `compress search`"
        )
    stored = read_json(path)
    opts = {k: v for k, v in given.items() if v is not None}
    clash = [k for k in _FIXED_ON_RESUME if k in opts and opts[k] != stored.get(k)]
    if clash:
        raise CompressError(
            f"{run} was started with other {', '.join(clash)}; resume it without "
            "those options, or start a new search with --out"
        )
    import yaml

    space_copy = run / "space.yaml"
    sp = parse_space(yaml.safe_load(space_copy.read_text()), stored["space"])
    return _validate({**stored, **opts, "out": str(run)}), sp

"""Building a trial's candidate: structure and training from the prefix cache, then the rest.

A recipe splits into its prefix (structure and training transforms: what costs training) and the
rest (numeric and runtime transforms: cheap, applied fresh every time). Every training transform
of the prefix ends a cacheable point. Rungs of training budget apply to the last training
transform (earlier ones, e.g. recovery before step distillation, train in full at the first
rung): at fraction f it trains to round(f x steps), resuming from the checkpoints its earlier
rungs left in the cache's work folder.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.search.cache import CorruptEntry, PrefixCache, prefix_key
from compress.transforms.base import Stage, run_order, spec_of

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from compress.recipe import Recipe
    from compress.transforms.base import TransformConfig

SECONDS_FILE = "seconds.json"  # lineage: cumulative training seconds at each checkpoint step


@dataclass(frozen=True)
class Plan:
    structure: list[TransformConfig]
    training: list[TransformConfig]
    rest: list[TransformConfig]

    @property
    def trains(self) -> bool:
        return bool(self.training)

    def scaled(self, fraction: float) -> list[TransformConfig]:
        """The prefix with its last training transform at `fraction` of its steps."""
        if not self.training or fraction >= 1.0:
            return [*self.structure, *self.training]
        last = self.training[-1]
        steps = max(1, round(fraction * last.steps))
        return [*self.structure, *self.training[:-1], last.model_copy(update={"steps": steps})]


def split(recipe: Recipe) -> Plan:
    stage = {t.kind: spec_of(t).stage for t in recipe.transforms}
    return Plan(
        structure=[t for t in recipe.transforms if stage[t.kind] == Stage.structure],
        training=[t for t in recipe.transforms if stage[t.kind] == Stage.training],
        rest=[t for t in recipe.transforms if stage[t.kind] > Stage.training],
    )


def rungs_for(plan: Plan, rungs: list[float]) -> list[float]:
    """The training fractions to score at: the space's rungs when the last training transform
    counts steps, else only the whole budget."""
    if not plan.trains or not hasattr(plan.training[-1], "steps"):
        return [1.0]
    return sorted({*(f for f in rungs if 0 < f < 1), 1.0})


@dataclass(frozen=True)
class Prefix:
    """What a built prefix is: the original model's fingerprint, its transforms and records."""

    base: Any
    base_call: dict[str, Any]
    transforms: list[Any]
    records: list[Any]


@dataclass
class CacheLog:
    """What this trial took from the cache and what it trained itself."""

    hits: list[dict[str, Any]] = field(default_factory=list)
    misses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def training_s(self) -> float:
        return sum(m["seconds"] for m in self.misses)

    @property
    def saved_s(self) -> float:
        return sum(h["seconds"] for h in self.hits)


class Builder:
    """Builds the trial's pipelines. `load()` gives a fresh copy of the uncompressed model,
    `load(folder)` a cached artifact; `context` holds the RunContext fields (device, data,
    prompts) every transform gets; the teacher is loaded once, when a transform trains."""

    def __init__(
        self,
        *,
        load: Any,
        context: dict[str, Any],
        cache: PrefixCache | None,
        weights: str,
        data: dict[str, Any],
        versions: dict[str, str],
        trial: int,
        log: logging.Logger,
    ) -> None:
        self._load, self._context = load, context
        self._teacher: Any = None
        self.cache, self.weights, self.data, self.versions = cache, weights, data, versions
        self.trial, self.log = trial, log
        self.record = CacheLog()
        self._own: set[str] = set()  # entries this trial built (not hits when reloaded)

    def key(self, configs: list[TransformConfig]) -> str:
        return prefix_key(self.weights, configs, self.data, self.versions)

    def cached_fraction(self, plan: Plan) -> bool:
        """True when the whole prefix is cached already (its rungs can be skipped)."""
        if self.cache is None or not plan.trains:
            return False
        try:
            return self.cache.lookup(self.key(plan.scaled(1.0))) is not None
        except CorruptEntry as exc:
            self.log.warning("%s", exc)
            return False

    def prefix(self, plan: Plan, fraction: float) -> tuple[DiffusionPipeline, Prefix]:
        """The pipeline after the prefix (last training transform at `fraction`) and what its
        transforms recorded, from the cache where possible."""
        from compress.generate import call_defaults
        from compress.models.fingerprint import fingerprint
        from compress.recipe import Recipe

        configs = plan.scaled(fraction)
        first_training = len(plan.structure)
        targets = list(range(first_training, len(configs)))  # cacheable: after each training
        start, pipe, cached, chain_s = self._longest_cached(configs, targets)
        if pipe is None:
            pipe = self._load()
            base, base_call = fingerprint(pipe), call_defaults(pipe)
            records: list[Any] = []
            for cfg in configs[:first_training]:
                records.append(self._apply(pipe, cfg, None))
            start = first_training - 1
        else:
            base, base_call, records = cached.base, cached.base_call, list(cached.records)
        for j in targets:
            if j <= start:
                continue
            key = self.key(configs[: j + 1])
            lock = self.cache.lock(key) if self.cache else contextlib.nullcontext()
            with lock:
                found = self._lookup(key)
                if found is not None:  # built by another trial while we waited
                    pipe, cached = self._load_entry(found, key)
                    records, chain_s = list(cached.records), found[1].get("training_s_total", 0.0)
                    continue
                lineage = self.key([*configs[:j], plan.scaled(1.0)[j]])
                # rungs of one lineage share its checkpoint folder: one trains there at a time
                held = (
                    self.cache.lock(f"lineage-{lineage}")
                    if self.cache
                    else contextlib.nullcontext()
                )
                t0 = time.perf_counter()
                with held, self._work_dir(lineage, configs[j]) as (work, before_s, before_steps):
                    records.append(self._apply(pipe, configs[j], work))
                    seconds = time.perf_counter() - t0
                    total = before_s + seconds
                    self._note_seconds(work, configs[j], total)
                chain_s += total
                self.record.misses.append(
                    {
                        "key": key,
                        "kind": configs[j].kind,
                        "steps": _steps(configs[j]),
                        "trained_steps": (_steps(configs[j]) or 0) - before_steps,
                        "seconds": seconds,
                    }
                )
                recipe = Recipe(
                    name="prefix",
                    transforms=configs[: j + 1],
                    base=base,
                    base_call=base_call,
                    records=records,
                )
                self._store(key, pipe, recipe, configs[j], chain_s)
        return pipe, Prefix(base, base_call, transforms=configs, records=records)

    def _longest_cached(
        self, configs: list[TransformConfig], targets: list[int]
    ) -> tuple[int, Any, Any, float]:
        for j in reversed(targets):
            key = self.key(configs[: j + 1])
            found = self._lookup(key)
            if found is not None:
                pipe, recipe = self._load_entry(found, key)
                return j, pipe, recipe, float(found[1].get("training_s_total", 0.0))
        return -1, None, None, 0.0

    def _lookup(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        if self.cache is None:
            return None
        try:
            return self.cache.lookup(key)
        except CorruptEntry as exc:
            self.log.warning("%s; retraining it", exc)
            return None

    def _load_entry(self, found: tuple[Path, dict[str, Any]], key: str) -> tuple[Any, Recipe]:
        from compress.recipe import load_recipe

        folder, meta = found
        pipe = self._load(folder)
        if key not in self._own:
            seconds = float(meta.get("training_s_total", 0.0))
            self.record.hits.append({"key": key, "seconds": seconds, "built_by": meta.get("trial")})
            self.log.info("prefix cache hit %s (saves %.1f s of training)", key, seconds)
        return pipe, load_recipe(folder / "recipe.yaml")

    def _apply(self, pipe: Any, cfg: TransformConfig, work: Path | None) -> Any:
        from compress.apply import run_transform
        from compress.context import RunContext
        from compress.recipe import Record

        ctx = RunContext(**self._context, out_dir=work)
        if spec_of(cfg).stage == Stage.training:
            if self._teacher is None:
                self._teacher = self._load()
            ctx.teacher = self._teacher
        t0 = time.perf_counter()
        metadata = run_transform(pipe, cfg, ctx)
        self.log.info("applied %s in %.1f s", cfg.kind, time.perf_counter() - t0)
        return Record(kind=cfg.kind, metadata=metadata)

    @contextlib.contextmanager
    def _work_dir(self, lineage: str, cfg: TransformConfig):
        """The lineage's checkpoint folder and the training seconds already in it; a fresh
        folder where the lineage trained past this target (a checkpoint cannot go back)."""
        if self.cache is None:
            with tempfile.TemporaryDirectory(prefix="compress-train-") as tmp:
                yield Path(tmp), 0.0, 0
            return
        work = self.cache.work_dir(lineage)
        steps = _checkpoint_steps(work)
        target = _steps(cfg)
        if target is not None and steps and max(steps) > target:
            self.log.info("lineage %s is past %d steps; training afresh", lineage, target)
            tmp = Path(tempfile.mkdtemp(prefix="compress-train-"))
            try:
                yield tmp, 0.0, 0
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return
        last = max(steps, default=0)
        yield work, _read_seconds(work).get(str(last), 0.0) if last else 0.0, last

    @staticmethod
    def _note_seconds(work: Path, cfg: TransformConfig, total: float) -> None:
        steps = _steps(cfg)
        if steps is None or not work.is_dir():
            return
        data = _read_seconds(work) | {str(steps): total}
        from compress.fs import write_atomic

        write_atomic(work / SECONDS_FILE, json.dumps(data))

    def _store(self, key: str, pipe: Any, recipe: Recipe, cfg: Any, chain_s: float) -> None:
        if self.cache is None:
            return
        info = {
            "kind": cfg.kind,
            "steps": _steps(cfg),
            "training_s_total": chain_s,
            "trial": self.trial,
            "created": time.time(),
        }
        try:
            self.cache.store(key, pipe, recipe, info)
            self._own.add(key)
        except Exception as exc:  # noqa: BLE001 - an uncacheable prefix only costs reuse
            self.log.warning("prefix %s not cached: %s", key, exc)

    def candidate(self, plan: Plan, fraction: float, parent: bool) -> tuple[Any, Recipe, Any]:
        """(candidate pipeline, its applied recipe, unquantized parent pipeline or None)."""
        from compress.recipe import Recipe

        pipe, prefix = self.prefix(plan, fraction)
        parent_pipe = self._parent(plan, pipe) if parent else None
        recipe = Recipe(
            name="candidate",
            transforms=[*prefix.transforms, *plan.rest],
            base=prefix.base,
            base_call=prefix.base_call,
            records=[*prefix.records, *self._apply_rest(pipe, plan.rest)],
        )
        return pipe, recipe, parent_pipe

    def _apply_rest(self, pipe: Any, rest: list[TransformConfig]) -> list[Any]:
        """The numeric and runtime transforms, run in `run_order`; records as listed."""
        records = {i: self._apply(pipe, rest[i], None) for i in run_order(rest)}
        return [records[i] for i in range(len(rest))]

    def _parent(self, plan: Plan, prefix_pipe: Any) -> Any:
        """The candidate without quantize/qat: a copy of its prefix when only the numeric stage
        quantizes; for QAT, the prefix without it, if that needs no training or is cached."""
        from compress.search.speed import QUANTIZING

        rest = [t for t in plan.rest if t.kind not in QUANTIZING]
        training = [t for t in plan.training if t.kind not in QUANTIZING]
        if len(training) == len(plan.training):
            pipe = copy.deepcopy(prefix_pipe)
        else:
            lean = Plan(plan.structure, training, rest)
            if training and not self.cached_fraction(lean):
                self.log.info("parent not timed: without qat it still needs training")
                return None
            pipe, _ = self.prefix(lean, 1.0)
        self._apply_rest(pipe, rest)
        return pipe


def _steps(cfg: Any) -> int | None:
    return getattr(cfg, "steps", None)


def _checkpoint_steps(work: Path) -> list[int]:
    if not work.is_dir():
        return []
    return [
        int(p.name.split("-")[1])
        for p in work.rglob("checkpoint-*")
        if p.is_dir() and (p / "trainer.json").is_file()
    ]


def _read_seconds(work: Path) -> dict[str, float]:
    path = work / SECONDS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}

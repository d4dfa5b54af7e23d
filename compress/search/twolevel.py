"""The two-level searcher Ray Tune runs: new prefixes from one Optuna study over the prefix knobs,
suffixes of each trained prefix from an Optuna study of its own, and the cost-aware rule of
`compress.search.allocation` deciding which of the two the next trial is.

A suffix trial is an ordinary trial whose prefix is already in the prefix cache, so it costs one
load and one evaluation. Every point a prefix reaches (with any suffix) is added to the prefix
study, so its sampler learns which prefixes lead to good fronts, not only which first trials
did. A prefix's suffix study starts from the suffixes of the current front (whatever prefix they
were found on), so that what works on one trained model is tried on the next one first.

Finishing knobs (search.levels: compile) are left off by the samplers: a quality-neutral
transform's score is known but for its latency, so it is measured only on a finished candidate
that it could bring onto the front, queued as a `finish` trial.

Where the space makes peak memory an objective (`objectives: [latency, quality, memory]`), the
studies minimise it as a third direction; the allocation's gains stay over latency and quality.

The state is rebuilt from the ledger whenever a searcher is made (a new phase, or `--resume`),
so nothing of it needs a checkpoint of its own.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ray.tune.search import Searcher

from compress.errors import CompressError
from compress.search.allocation import Choice, Outcome, choose, gains
from compress.search.ledger import TrialRecord, TrialResult
from compress.search.levels import Levels
from compress.search.study import directions

if TYPE_CHECKING:
    import optuna

    from compress.search.space import SearchSpace
    from compress.search.tuning import Limits

log = logging.getLogger("compress.search")
ORIGINS = ("start", "composition", "prefix", "suffix", "finish")
# Asks of a suffix study before its repeats give way to a neighbour: TPE draws fresh candidates
# at each ask, so a second or third often leaves the best point; enqueued front suffixes already
# run on this prefix are used up this way too.
_ASKS = 4
_RETRIES = 12  # asks before a sampler that keeps repeating finished points is overruled
# A finishing variant is run when the candidate would join the front at this fraction of its
# latency: compile gains 1.1-1.2x on these CPUs, up to 2x for int8 formats on GPUs (reports/gpu.md).
FINISH_REACH = 0.5
FINISH_PRIOR_S = 60.0  # what a finishing trial costs before one has run (a cold compile here)


@dataclass
class _Running:
    number: int
    params: dict[str, Any]
    origin: str
    started: float
    asked: dict[str, Any] = field(default_factory=dict)  # study name -> optuna Trial


class TwoLevelSearch(Searcher):
    """Ray Tune Searcher over a space split into prefix and suffix knobs (see the module doc)."""

    def __init__(
        self,
        space: SearchSpace,
        levels: Levels,
        *,
        make_sampler: Callable[[int, bool], optuna.samplers.BaseSampler],
        records: list[TrialRecord],
        baseline_quality: float,
        limits: Limits,
        queue: list[tuple[dict[str, Any], str]] | None = None,
        compose: Callable[[list[TrialRecord]], list[dict[str, Any]]] | None = None,
        deadline: float | None = None,
        training_prior_s: float = 300.0,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(metric="quality", mode="max")
        self._space, self._levels = space, levels
        self._make_sampler = make_sampler
        self._baseline, self._limits = baseline_quality, limits
        self._memory = space.spec.minimises_memory  # the studies' third objective
        self._queue = list(queue or [])
        self._parents: dict[str, int] = {}  # a queued finishing variant -> the trial it finishes
        # once every start point has finished: the unions of the faster ones (search.compose)
        self._compose = compose
        self._records = list(records)
        self._deadline, self._prior, self._clock = deadline, training_prior_s, clock
        self._rng, self._seed = random.Random(seed), seed
        self._turns: dict[tuple, int] = {}  # per prefix: how far its knob sweep has got
        self._running: dict[str, _Running] = {}
        self._history: list[tuple[Outcome, dict[str, Any]]] = []  # finished trials, in order
        self._seen: list[dict[str, Any]] = []
        self._prefixes: dict[str, dict[str, Any]] = {}  # key -> prefix knob values
        self._exhausted: set[str] = set()
        self._how = ""  # what proposed the last point (the prefix/suffix sampler, a neighbour)
        self._studies: dict[str, optuna.Study] = {}
        self._number = max((r.number for r in records), default=-1) + 1
        self.choices: list[tuple[int, Choice]] = []  # what the rule decided, for the log
        for r in sorted(records, key=lambda r: r.number):
            self._learn_record(r)
        for r in sorted(records, key=lambda r: r.number):  # on resume: what was not finished
            if r.state == "complete" and r.feasible and r.faster:
                self._finish(dict(r.params), r.point, r.number)

    # --- Ray Tune's Searcher API ---

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        number = self._number
        self._number += 1
        asked: dict[str, Any] = {}
        self._maybe_compose()
        self._drop_late_finishing()
        if self._queue:
            params, origin = self._queue.pop(0)
        else:
            choice = self._choose()
            self.choices.append((number, choice))
            log.info("trial %d: %s (%s)", number, choice.level, choice.why)
            found = None
            if choice.level == "suffix" and choice.prefix is not None:
                found, origin = self._suffix_on(choice.prefix), "suffix"
            if found is None:
                found, origin = self._new_prefix()
            params, asked = found
        self._seen.append(params)
        self._prefixes.setdefault(
            self._levels.prefix_key(params), self._levels.prefix_values(params)
        )
        self._running[trial_id] = _Running(number, params, origin, self._clock(), asked)
        config = {"number": number, "origin": origin, **params}
        parent = self._parents.pop(_key(params), None) if origin == "finish" else None
        if self.choices and self.choices[-1][0] == number:
            choice = self.choices[-1][1]
            config["why"] = (
                f"{choice.level} at {choice.rate:.3g} HV/s ({choice.why}); proposed by {self._how}"
            )
        elif origin == "finish":
            config["why"] = (
                f"finishing: {', '.join(self._levels.finish)} on trial {parent}'s candidate, which "
                f"would join the front at {FINISH_REACH:g} x its latency"
            )
            config["parent"] = parent
        invalid = self._invalid(params, number)
        return {**config, "invalid": invalid} if invalid else config

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        run = self._running.pop(trial_id, None)
        if run is None:
            return
        r = TrialResult.of(result)
        point = None if error else _point(r)
        full = not error and r.stage == 2
        scored = not error and r.scored
        faster = (r.speedup_low or 0) > 1.0
        violations = self._limits.violations(r.latency_ms, r.quality, r.peak_memory_mb)
        feasible = not any(v > 0 for v in violations.values())
        self._tell(run.params, None if error else _values(r, self._memory), run.asked, violations)
        outcome = Outcome(
            number=run.number,
            prefix=self._levels.prefix_key(run.params),
            point=point if full and faster and feasible else None,
            seconds=self._clock() - run.started,
            training_s=sum(m.get("seconds", 0.0) for m in r.cache.get("misses", [])),
            ready=scored and (r.training_fraction is None or r.training_fraction >= 1.0),
        )
        self._history.append((outcome, run.params))
        if outcome.point is not None:
            self._finish(run.params, outcome.point, run.number)
        state = "failed" if error else ("complete" if full else "stopped")
        self._records.append(
            TrialRecord(
                number=run.number,
                state=state,
                params=run.params,
                speedup=r.speedup,
                speedup_ci=r.speedup_ci,
                quality=r.quality,
                peak_memory_mb=r.peak_memory_mb,
                training=r.training,
                constraints=violations,
                origin=run.origin,
            )
        )

    @property
    def outcomes(self) -> list[Outcome]:
        return [o for o, _ in self._history]

    def _maybe_compose(self) -> None:
        """Queue the compositions when no start point is queued or running any more."""
        if self._compose is None:
            return
        if any(o == "start" for _, o in self._queue):
            return
        if any(r.origin == "start" for r in self._running.values()):
            return
        compose, self._compose = self._compose, None
        seen = [p for p, _ in self._queue] + [r.params for r in self._running.values()]
        # the start points' unions only: on a cluster, the sampler's trials that finished while
        # the start points trained would otherwise be paired too (quadratically many)
        starts = [r for r in self._records if r.origin == "start"]
        seen += [r.params for r in self._records]
        queued = [p for p in compose(starts) if p not in seen]
        self._queue.extend((p, "composition") for p in queued)
        # compositions before finishing: a composition may itself be the one worth compiling
        self._queue.sort(key=lambda item: item[1] == "finish")

    # --- the two levels ---

    def _choose(self) -> Choice:
        remaining = None if self._deadline is None else self._deadline - self._clock()
        usable = [o for o in self.outcomes if o.prefix not in self._exhausted]
        pending = frozenset(self._levels.prefix_key(r.params) for r in self._running.values())
        return choose(
            usable,
            self._baseline,
            remaining_s=remaining,
            training_prior_s=self._prior,
            pending=pending,
        )

    def _new_prefix(self) -> tuple[tuple[dict[str, Any], dict[str, Any]], str]:
        """A prefix no trial has trained yet, from the prefix study (or, where it returns to a
        known one, a neighbour of its proposal); its first suffix from its own study."""
        study = self._study("prefix")
        trial = study.ask()
        values = self._space.assign(trial, names=self._levels.prefix)
        key = self._levels.prefix_key(values)
        if key not in self._prefixes:
            suffix, asked = self._suffix_for(values)
            self._how = "the prefix sampler"
            return ({**values, **suffix}, {"prefix": trial, **asked}), "prefix"
        study.tell(trial, state=_state("FAIL"))
        nearby = self._mutate(
            self._levels.prefix,
            {},
            values,
            lambda v: self._levels.prefix_key(v) not in self._prefixes,
        )
        if nearby is not None:
            suffix, asked = self._suffix_for(nearby)
            self._how = "a neighbour of the prefix sampler's repeated point"
            return ({**nearby, **suffix}, asked), "prefix"
        found = self._suffix_on(key)  # every prefix near it is known: mine the proposed one
        if found is not None:
            return found, "suffix"
        suffix, asked = self._suffix_for(values)  # nothing new anywhere: a known point again
        self._how = "a point already run (nothing new left near it)"
        return ({**values, **suffix}, asked), "suffix"

    def _suffix_on(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """A suffix not run yet on trained prefix `key`: its study's proposal, or, when the
        study returns to a point already run (TPE does on small discrete spaces), a neighbour
        of it; None when there is none."""
        prefix = self._prefixes[key]
        fresh = lambda v: {**prefix, **v} not in self._seen  # noqa: E731
        for _ in range(_ASKS):  # a repeat is told failed (TPE ignores it) and asked again
            suffix, asked = self._suffix_for(prefix)
            if {**prefix, **suffix} not in self._seen:
                self._how = "its sampler"
                return {**prefix, **suffix}, asked
            self._study(key).tell(asked[key], state=_state("FAIL"))
        nearby = self._mutate(self._levels.suffix, prefix, suffix, fresh)
        if nearby is None:
            self._exhausted.add(key)  # its suffixes are all run: spend elsewhere
            return None
        self._how = "a neighbour of its sampler's repeated point"
        return {**prefix, **nearby}, {}  # told by add_trial once scored

    def _mutate(
        self,
        names: tuple[str, ...],
        given: dict[str, Any],
        base: dict[str, Any],
        fresh: Callable[[dict[str, Any]], bool],
    ) -> dict[str, Any] | None:
        """A point one knob away from `base` (that knob redrawn at random, and any knob it
        switches on), among `names`, for which `fresh` holds; None after _RETRIES draws.

        Optuna's samplers may return to the best point of a small discrete space again and
        again; a failed tell does not move them. A random neighbour keeps the search moving
        near what works (what an evolutionary sampler's mutation does)."""
        import optuna

        active = [k for k in names if k in base]
        if not active:
            return None
        if not hasattr(self, "_random"):
            sampler = optuna.samplers.RandomSampler(seed=self._rng.randrange(2**31))
            self._random = optuna.create_study(sampler=sampler)
        turn = self._turns.setdefault(tuple(sorted(given.items(), key=str)), 0)
        order = sorted(active)
        random.Random(self._seed).shuffle(order)
        for attempt in range(_RETRIES):
            # each knob in turn (a coordinate sweep), then at random
            knob = (
                order[(turn + attempt) % len(order)]
                if attempt < len(order)
                else self._rng.choice(active)
            )
            keep = {k: v for k, v in base.items() if k != knob}
            values = self._space.assign(self._random.ask(), names=names, given={**given, **keep})
            part = {k: v for k, v in values.items() if k not in given}  # finishing knobs too
            if fresh(part):
                self._turns[tuple(sorted(given.items(), key=str))] = turn + attempt + 1
                return part
        return None

    def _suffix_for(self, prefix: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        key = self._levels.prefix_key(prefix)
        study = self._study(key)
        trial = study.ask()
        given = {**prefix, **dict(self._levels.off)}  # finishing transforms off
        values = self._space.assign(trial, names=self._levels.suffix, given=given)
        return {k: v for k, v in values.items() if k not in prefix}, {key: trial}

    # --- finishing (quality-neutral transforms) ---

    def _finish(self, params: dict[str, Any], point: tuple[float, float], number: int) -> None:
        """Queue the finishing variant of finished candidate `number` (at `point`) if, at
        FINISH_REACH of its latency, no point of the front would dominate it."""
        if not self._levels.finish or self._levels.finishing(params):
            return
        reach = (point[0] * FINISH_REACH, point[1])
        front = [o.point for o in self.outcomes if o.point is not None]
        if any(p[0] <= reach[0] and p[1] >= reach[1] for p in front):
            return
        import optuna

        base = {k: v for k, v in params.items() if k not in self._levels.finish}
        queued = [p for p, _ in self._queue]
        sampler = optuna.samplers.RandomSampler(seed=self._rng.randrange(2**31))
        study = optuna.create_study(sampler=sampler)
        for _ in range(_RETRIES):  # the switches on; any field they open drawn at random
            values = self._space.assign(study.ask(), names=self._levels.finish, given=base)
            if self._levels.finishing(values) and values not in self._seen + queued:
                self._queue.append((values, "finish"))
                self._parents[_key(values)] = number
                return

    def _drop_late_finishing(self) -> None:
        """Finishing trials that the time left no longer covers are not started."""
        if self._deadline is None:
            return
        done = [o.seconds for o, p in self._history if self._levels.finishing(p)]
        cost = sum(done) / len(done) if done else FINISH_PRIOR_S
        if self._deadline - self._clock() < cost:
            self._queue = [(p, o) for p, o in self._queue if o != "finish"]

    def _study(self, name: str) -> optuna.Study:
        """The prefix study, or the suffix study of one prefix (made on first use, seeded with the
        suffixes of the current front)."""
        import optuna

        if name not in self._studies:
            sampler = self._make_sampler(len(self._studies), name == "prefix")
            self._studies[name] = optuna.create_study(
                directions=directions(self._memory), sampler=sampler
            )
            if name != "prefix":
                for suffix in self._front_suffixes():
                    self._studies[name].enqueue_trial(suffix, skip_if_exists=True)
        return self._studies[name]

    def _front_suffixes(self) -> list[dict[str, Any]]:
        """Suffix knob values of the points that raised the front most, largest gain first."""
        outcomes = self.outcomes
        ranked = sorted(
            zip(gains(outcomes, self._baseline), range(len(outcomes)), strict=True), reverse=True
        )
        return [self._levels.suffix_values(self._history[i][1]) for g, i in ranked if g > 0][:3]

    # --- learning ---

    def _learn_record(self, r: TrialRecord) -> None:
        """A finished trial of the ledger: its outcome, and its point told to both studies."""
        params = dict(r.params)
        self._seen.append(params)
        if r.state == "interrupted" or not params:
            return
        key = self._levels.prefix_key(params)
        self._prefixes.setdefault(key, self._levels.prefix_values(params))
        self._tell(params, r.objectives(self._memory), {}, r.constraints)
        outcome = Outcome(
            number=r.number,
            prefix=key,
            point=r.point if r.state == "complete" and r.feasible and r.faster else None,
            seconds=float(r.times.get("wall", r.times.get("trial", 0.0))),
            training_s=sum(m.get("seconds", 0.0) for m in r.cache.get("misses", [])),
            ready=r.state == "complete" or (r.state == "stopped" and _trained(r.stopped_at)),
        )
        self._history.append((outcome, params))

    def _tell(
        self,
        params: dict[str, Any],
        point: tuple[float, ...] | None,
        asked: dict[str, Any],
        violations: dict[str, float],
    ) -> None:
        """Tell the prefix study and the prefix's suffix study what `params` scored (each
        objective's value), with its constraint violations (the samplers prefer candidates
        within the limits)."""
        from optuna.trial import FixedTrial, create_trial

        from compress.search.study import CONSTRAINTS, constraint_values

        attrs = {CONSTRAINTS: constraint_values(violations)}
        key = self._levels.prefix_key(params)
        prefix = self._levels.prefix_values(params)
        parts = {"prefix": (self._levels.prefix, None), key: (self._levels.suffix, prefix)}
        if self._levels.finishing(params):  # its suffix study only knows unfinished candidates
            del parts[key]
        for study_name, (names, given) in parts.items():
            study = self._study(study_name)
            trial = asked.get(study_name)
            if trial is not None:
                if point is None:
                    study.tell(trial, state=_state("FAIL"))
                else:
                    trial.set_user_attr(CONSTRAINTS, attrs[CONSTRAINTS])
                    study.tell(trial, list(point))
                continue
            if point is None:
                continue
            fixed = FixedTrial(params)
            try:
                self._space.assign(fixed, names=names, given=given)
            except (ValueError, CompressError):
                continue
            if fixed.params:
                study.add_trial(
                    create_trial(
                        params=fixed.params,
                        distributions=fixed.distributions,
                        values=list(point),
                        user_attrs=attrs,
                    )
                )

    def _invalid(self, params: dict[str, Any], number: int) -> str | None:
        from optuna.trial import FixedTrial

        try:
            self._space.suggest(FixedTrial(params, number))
        except (CompressError, ValueError) as exc:  # a transform's cross-field rule
            return str(exc)
        return None


def _key(params: dict[str, Any]) -> str:
    return repr(sorted(params.items(), key=str))


def _values(r: TrialResult, memory: bool) -> tuple[float, ...] | None:
    """What the studies are told: the point, with the peak memory where it is an objective."""
    point = _point(r)
    if not memory or point is None:
        return point
    return None if r.peak_memory_mb is None else (*point, float(r.peak_memory_mb))


def _point(r: TrialResult) -> tuple[float, float] | None:
    if r.relative_latency is None or r.quality is None:
        return None
    return (float(r.relative_latency), float(r.quality))


def _trained(stopped_at: dict[str, Any] | None) -> bool:
    """A stopped trial whose last score came after all of its training (or it trains nothing)."""
    fraction = (stopped_at or {}).get("training_fraction")
    return stopped_at is not None and (fraction is None or fraction >= 1.0)


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return getattr(TrialState, name)

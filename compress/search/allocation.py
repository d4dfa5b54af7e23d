"""Where the two-level search spends its next trial: one more suffix on a trained prefix, or a new
prefix (which trains), by expected hypervolume gain per second.

Every finished trial is an `Outcome`: the hypervolume its point added to the front of the trials
before it (`gains`; zero when dominated, stopped or failed), over a fixed corner (relative
latency 1, half the baseline's quality: a point worse than that adds nothing, and the corner does
not move as points arrive), and the seconds it held a worker, training included. Then:

- a suffix trial on trained prefix p is expected to add the mean gain of p's last `WINDOW`
  trials plus an exploration bonus that shrinks as p is tried (UCB1's: the mean gain of all
  trials times sqrt(ln N / n_p)), so that two prefixes whose recent trials gained nothing take
  turns instead of one being mined forever; it costs the median seconds of the trials that
  trained nothing (the search's measured price of one evaluation);
- a new prefix is expected to add what a trained prefix so far added with all its trials (their
  mean, shrunk by one pseudo-prefix that added nothing: a sampled prefix may be a dud, and the
  first ones are usually a space's curated start points; before any has trained, the untrained
  ones), and to cost the training a prefix has cost (`training_prior_s` before any trained)
  plus the evaluations a prefix has had. It is affordable
  only when the time left covers the training a prefix has cost so far (or `training_prior_s`
  before any has trained): training that the time budget would cut off is not started.

The highest rate wins; with no gain anywhere yet, a new prefix while one is affordable, else the
least explored trained prefix. Ray Tune's schedulers compare trials at rungs of one budget; none
of them (nor Optuna's samplers) decides between spending on configurations of different cost,
hence this rule.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from compress.search.pareto import Point, hypervolume, pareto_front

WINDOW = 3  # recent suffix trials a prefix's expected gain follows (gains fall as it is mined)


@dataclass(frozen=True)
class Outcome:
    """One finished trial as the allocation sees it."""

    number: int
    prefix: str  # levels.Levels.prefix_key of its knob values
    point: Point | None  # (relative latency, quality) when fully evaluated, feasible, faster
    seconds: float  # wall seconds on its worker, training included
    training_s: float  # seconds it trained (0 when its prefix came from the cache)
    ready: bool  # its prefix trained in full (and is cached): suffixes can follow


@dataclass(frozen=True)
class Choice:
    level: str  # "suffix" (on `prefix`) or "prefix" (a new one)
    prefix: str | None
    rate: float  # expected hypervolume per second
    why: str


def gains(outcomes: Sequence[Outcome], baseline_quality: float) -> list[float]:
    """Each outcome's hypervolume gain over the front of the outcomes before it (by number)."""
    reference = (1.0, baseline_quality - 0.5 * abs(baseline_quality))
    front: list[Point] = [(1.0, baseline_quality)]
    out: dict[int, float] = {}
    for o in sorted(outcomes, key=lambda o: o.number):
        if o.point is None:
            out[o.number] = 0.0
            continue
        before = hypervolume(front, reference)
        grown = [*front, o.point]
        front = [grown[i] for i in pareto_front(grown)]
        out[o.number] = max(0.0, hypervolume(front, reference) - before)
    return [out[o.number] for o in outcomes]


def choose(
    outcomes: Sequence[Outcome],
    baseline_quality: float,
    *,
    remaining_s: float | None,
    training_prior_s: float,
    pending: frozenset[str] = frozenset(),
) -> Choice:
    """The next trial's level (and prefix, for a suffix trial); see the module docstring."""
    gain = dict(zip((o.number for o in outcomes), gains(outcomes, baseline_quality), strict=True))
    by_prefix: dict[str, list[Outcome]] = {}
    for o in sorted(outcomes, key=lambda o: o.number):
        by_prefix.setdefault(o.prefix, []).append(o)
    ready = [p for p, os in by_prefix.items() if any(o.ready for o in os)]
    mean_gain = statistics.mean(gain.values()) if gain else 0.0
    evaluation_s = _evaluation_seconds(outcomes)
    options: list[Choice] = []
    total = len(outcomes)
    for p in ready:
        recent = [gain[o.number] for o in by_prefix[p][-WINDOW:]]
        bonus = mean_gain * math.sqrt(math.log(max(total, 2)) / len(by_prefix[p]))
        expected = sum(recent) / len(recent) + bonus
        options.append(
            Choice("suffix", p, expected / evaluation_s, f"{len(by_prefix[p])} trials on it")
        )
    trained = [os for os in by_prefix.values() if any(o.training_s > 0 for o in os)]
    training_s = (
        statistics.mean(sum(o.training_s for o in os) for os in trained)
        if trained
        else training_prior_s
    )
    if remaining_s is None or remaining_s >= training_s + evaluation_s:
        known = trained or list(by_prefix.values())
        worth = [sum(gain[o.number] for o in os) for os in known] or [0.0]
        spent = statistics.mean([sum(o.seconds - o.training_s for o in os) for os in known] or [0])
        # one pseudo-prefix that added nothing: a sampled prefix may well be a dud (the ones
        # tried first are usually a space's curated start points)
        value = sum(worth) / (len(worth) + 1)
        rate = value / (training_s + max(spent, evaluation_s))
        options.append(Choice("prefix", None, rate, f"expected training {training_s:.0f} s"))
    if not options:  # nothing trained yet and no time to train: the cheapest new prefix
        return Choice("prefix", None, 0.0, "no trained prefix yet")
    best = max(options, key=lambda c: c.rate)
    if best.rate > 0:
        return best
    if any(c.level == "prefix" for c in options) or not ready:
        return Choice("prefix", None, 0.0, "no gain anywhere yet: explore a new prefix")
    idle = [p for p in ready if p not in pending] or ready
    least = min(idle, key=lambda p: len(by_prefix[p]))
    return Choice("suffix", least, 0.0, "no gain anywhere yet: the least explored prefix")


def _evaluation_seconds(outcomes: Sequence[Outcome]) -> float:
    """The measured price of one evaluation: median seconds of trials that trained nothing."""
    cheap = [o.seconds for o in outcomes if o.training_s == 0 and o.seconds > 0]
    return statistics.median(cheap) if cheap else 60.0

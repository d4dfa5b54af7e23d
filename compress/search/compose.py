"""Compositions: pairs of finished candidates merged into one candidate.

Speed-ups compound across stages (fewer blocks x fewer steps x cached features), but a sampler
that has seen each technique alone rarely proposes their union within a small budget: TPE models
each knob's good values, not which of them stack. So after the start points, the search itself
tries the union of every two candidates that were really faster than the baseline, the cheapest
first, before the sampler goes on. Neither Optuna nor Ray Tune composes configurations; this is
the one rule they lack, and it reuses their `points_to_evaluate` to run the result.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    from compress.search.ledger import TrialRecord
    from compress.search.space import SearchSpace


def compositions(space: SearchSpace, records: list[TrialRecord]) -> list[dict[str, Any]]:
    """Knob values merging each pair of faster candidates, not yet run, cheapest first.

    Order: pairs of which at most one trains (that one left its trained prefix in the cache, so
    the union usually costs one evaluation) before pairs that both train; within each, the
    larger product of the two measured speed-ups first.
    """
    ingredients = [
        r
        for r in records
        if r.state in ("complete", "stopped") and r.faster and r.feasible and r.speedup
    ]
    seen = [r.params for r in records]
    ranked: list[tuple[bool, float, dict[str, Any]]] = []
    for a, b in itertools.combinations(ingredients, 2):
        params = merge(space, a, b)
        if params is None or params in seen:
            continue
        seen.append(params)
        ranked.append((a.training and b.training, -(a.speedup or 1) * (b.speedup or 1), params))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [params for *_, params in ranked]


def merge(space: SearchSpace, a: TrialRecord, b: TrialRecord) -> dict[str, Any] | None:
    """The union of two candidates' knob values, or None where the space rejects it.

    A switch knob (one that sets no transform field, e.g. `structure`) is off at its first
    choice: the candidate that turns it on wins. Any other knob both give a value to takes the
    faster candidate's value (its sampler settings are what made it fast). Knobs the merged
    switches make inactive are dropped.
    """
    from optuna.trial import FixedTrial

    fast, slow = (a, b) if (a.speedup or 0) >= (b.speedup or 0) else (b, a)
    merged: dict[str, Any] = {}
    for name, knob in space.spec.knobs.items():
        values = [r.params[name] for r in (fast, slow) if name in r.params]
        if not values:
            continue
        if knob.sets is None and knob.choices:
            on = [v for v in values if v != knob.choices[0]]
            merged[name] = on[0] if on else values[0]
        else:
            merged[name] = values[0]
    fixed = FixedTrial(merged, number=0)
    try:
        space.suggest(fixed)
    except (CompressError, ValueError):  # a cross-field rule, or a knob neither one set
        return None
    return dict(fixed.params)

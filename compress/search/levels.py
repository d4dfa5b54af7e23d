"""The two levels of a search space: prefix knobs (what the structure and training transforms
become: expensive, minutes to hours of training) and suffix knobs (numeric and runtime: one
evaluation each on a trained prefix).

A knob belongs to the prefix when it sets a field of a structure or training transform, or when
it is a switch (no `sets`) that a prefix transform or prefix knob depends on through `when:`;
every other knob is a suffix knob. Suffix knobs may depend on prefix knobs (a scheduler only
for students that take one); a prefix knob that depends on a suffix knob is an error, since a
prefix must be fixed before its suffixes are explored.

Finishing knobs are the suffix knobs of quality-neutral transforms (compile: images equal within
float rounding): a switch that only such transforms depend on, and the fields it opens. The
suffix samplers leave them off; a finished candidate gets its finishing variant only when the
variant could join the front (search.twolevel), since its quality is known before it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compress.search.space_file import SpaceError

if TYPE_CHECKING:
    from compress.search.space import SearchSpace


@dataclass(frozen=True)
class Levels:
    prefix: tuple[str, ...]  # knob names, in the space's order
    suffix: tuple[str, ...]  # without the finishing knobs
    finish: tuple[str, ...] = ()
    off: tuple[tuple[str, Any], ...] = ()  # the finishing switches' values that leave them off

    def finishing(self, params: dict[str, Any]) -> bool:
        """True when `params` switch a finishing transform on."""
        return any(k in params and params[k] != v for k, v in self.off)

    def prefix_values(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params.items() if k in self.prefix}

    def suffix_values(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params.items() if k in self.suffix}

    def prefix_key(self, params: dict[str, Any]) -> str:
        """One string per distinct prefix (its knob values, canonically ordered)."""
        return json.dumps(self.prefix_values(params), sort_keys=True, default=str)


def split_levels(space: SearchSpace) -> Levels:
    """Classify the space's knobs into prefix and suffix knobs (see the module docstring)."""
    from compress.transforms.base import Stage, registry

    specs = registry()
    knobs = space.spec.knobs

    def prefix_kind(kind: str) -> bool:
        return specs[kind].stage <= Stage.training

    prefix = {n for n, k in knobs.items() if k.sets and prefix_kind(k.sets.partition(".")[0])}
    while True:  # switches that prefix transforms or prefix knobs depend on, transitively
        refs = {r for kind, e in space.spec.transforms.items() if prefix_kind(kind) for r in e.when}
        refs |= {r for n in prefix for r in knobs[n].when}
        kind_refs = {
            r
            for n in prefix
            if knobs[n].sets
            for r in space.spec.transforms[knobs[n].sets.partition(".")[0]].when
        }
        grown = prefix | {r for r in refs | kind_refs if knobs[r].sets is None}
        if grown == prefix:
            break
        prefix = grown
    for n in sorted(prefix):
        late = sorted(r for r in knobs[n].when if r not in prefix)
        if late:
            raise SpaceError(
                f"search space {space.source}: knob {n!r} shapes the trained prefix (structure "
                f"or training) but depends on {late}, which only set numeric or runtime "
                "transforms; a prefix is fixed before its suffixes are explored"
            )
    order = list(knobs)
    finish, off = _finishing(space, prefix)
    return Levels(
        prefix=tuple(n for n in order if n in prefix),
        suffix=tuple(n for n in order if n not in prefix and n not in finish),
        finish=tuple(n for n in order if n in finish),
        off=tuple(off.items()),
    )


def _finishing(space: SearchSpace, prefix: set[str]) -> tuple[set[str], dict[str, Any]]:
    """The finishing knobs (see the module docstring) and each switch's off value."""
    from compress.transforms.base import registry

    specs, spec = registry(), space.spec
    neutral = {kind for kind in spec.transforms if specs[kind].neutral}
    off: dict[str, Any] = {}
    for name, knob in spec.knobs.items():
        if knob.sets or knob.type != "categorical" or name in prefix:
            continue
        users = [k for k, e in spec.transforms.items() if name in e.when]
        users += [n for n, k in spec.knobs.items() if name in k.when and not _sets(k, neutral)]
        if not users or any(u not in neutral for u in users):
            continue
        on = [spec.transforms[k].when[name] for k in users]
        on = [v for w in on for v in (w if isinstance(w, list) else [w])]
        free = [c for c in knob.choices if c not in on]
        if free:
            off[name] = free[0]
    finish = set(off) | {n for n, k in spec.knobs.items() if _sets(k, neutral)}
    return finish, off


def _sets(knob: Any, kinds: set[str]) -> bool:
    return bool(knob.sets) and knob.sets.partition(".")[0] in kinds

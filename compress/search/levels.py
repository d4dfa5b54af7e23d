"""The two levels of a search space: prefix knobs (what the structure and training transforms
become: expensive, minutes to hours of training) and suffix knobs (numeric and runtime: one
evaluation each on a trained prefix).

A knob belongs to the prefix when it sets a field of a structure or training transform, or when
it is a switch (no `sets`) that a prefix transform or prefix knob depends on through `when:`;
every other knob is a suffix knob. Suffix knobs may depend on prefix knobs (a scheduler only
for students that take one); a prefix knob that depends on a suffix knob is an error, since a
prefix must be fixed before its suffixes are explored.
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
    suffix: tuple[str, ...]

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
    return Levels(
        prefix=tuple(n for n in order if n in prefix),
        suffix=tuple(n for n in order if n not in prefix),
    )

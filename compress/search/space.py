"""Search spaces: YAML knobs over transform fields, compiled into an Optuna define-by-run function.

A space file names knobs (categorical, int, float; log scale; `when:` conditions on earlier
knobs), each setting one field of one registered transform (`sets: sampler.steps`). `suggest`
only asks the trial for values and builds the Recipe, so a space replays without a study via
`optuna.trial.FixedTrial(params)`.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from compress.search.space_file import Knob, SpaceError, SpaceFile, TransformEntry

if TYPE_CHECKING:
    from compress.recipe import Recipe

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _matches(cond: dict[str, Any], values: dict[str, Any]) -> bool:
    """True when every knob named in `cond` was suggested with (one of) the given value(s)."""
    for name, want in cond.items():
        if name not in values:
            return False
        allowed = want if isinstance(want, list) else [want]
        if values[name] not in allowed:
            return False
    return True


class SearchSpace:
    """A validated space: `suggest(trial) -> Recipe` is the define-by-run function."""

    def __init__(self, spec: SpaceFile, source: str = "<space>") -> None:
        self.spec = spec
        self.source = source
        self._validate()

    @property
    def name(self) -> str:
        return self.spec.name

    def _error(self, where: str, msg: str) -> SpaceError:
        label = where if where.startswith("transforms.") else f"knob {where!r}"
        return SpaceError(f"search space {self.source}: {label}: {msg}")

    def _validate(self) -> None:
        from compress.transforms.base import registry

        specs = registry()
        kinds = ", ".join(sorted(specs))
        for kind, entry in self.spec.transforms.items():
            if kind not in specs:
                raise SpaceError(
                    f"search space {self.source}: transform {kind!r} is not "
                    f"registered; known kinds: {kinds}"
                )
            self._check_when(f"transforms.{kind}", entry.when, before=list(self.spec.knobs))
            self._config(kind, {}, where=f"transforms.{kind}")
        seen: list[str] = []
        for name, knob in self.spec.knobs.items():
            if not _NAME.match(name):
                raise self._error(name, "names must be identifiers (letters, digits, _)")
            self._check_when(name, knob.when, before=seen)
            self._check_domain(name, knob)
            if knob.sets is not None:
                kind, _, field = knob.sets.partition(".")
                if kind not in specs:
                    raise self._error(
                        name,
                        f"sets {knob.sets!r} but transform {kind!r} is not "
                        f"registered; known kinds: {kinds}",
                    )
                fields = [f for f in specs[kind].config.model_fields if f != "kind"]
                if field not in fields:
                    raise self._error(
                        name,
                        f"sets {knob.sets!r} but {kind} has no field "
                        f"{field!r}; its fields: {', '.join(fields)}",
                    )
                entry = self.spec.transforms.setdefault(kind, TransformEntry())
                late = [ref for ref in entry.when if ref not in seen]
                if late:
                    raise self._error(
                        name,
                        f"sets {kind}, which depends on {late}; define those knobs before this one",
                    )
                for value in self._extremes(knob):
                    self._config(kind, {field: value}, where=name)
            seen.append(name)
        for i, point in enumerate(self.spec.search.start):
            self._check_start(i, point)

    def _check_start(self, i: int, point: dict[str, Any]) -> None:
        """A start point gives every knob active under it a value in that knob's domain, and
        nothing else (so a resumed search recognises it among the trials already run)."""
        from optuna.trial import FixedTrial

        where = f"search space {self.source}: search.start[{i}]"
        unknown = sorted(set(point) - set(self.spec.knobs))
        if unknown:
            raise SpaceError(
                f"{where} names unknown knobs {unknown}; knobs: {list(self.spec.knobs)}"
            )
        for name, value in point.items():
            if not _in_domain(self.spec.knobs[name], value):
                raise SpaceError(f"{where}: {name}={value!r} is outside the knob's domain")
        try:
            self.suggest(FixedTrial(point, number=0))
        except ValueError as exc:  # optuna: an active knob without a value
            raise SpaceError(f"{where}: {exc}") from None
        idle = sorted(k for k in point if not self._active(self.spec.knobs[k], point))
        if idle:
            raise SpaceError(f"{where} sets {idle}, inactive under its other values; drop them")

    def _check_when(self, where: str, cond: dict[str, Any], before: list[str]) -> None:
        for ref, want in cond.items():
            if ref not in before:
                raise self._error(
                    where,
                    f"`when:` refers to {ref!r}, which is not a knob "
                    f"defined before it ({', '.join(before) or 'none'})",
                )
            choices = self.spec.knobs[ref].choices
            for value in want if isinstance(want, list) else [want]:
                if choices is not None and value not in choices:
                    raise self._error(
                        where, f"`when:` tests {ref}={value!r} but {ref} only takes {choices}"
                    )

    def _check_domain(self, name: str, k: Knob) -> None:
        if k.type == "categorical":
            if not k.choices:
                raise self._error(name, "a categorical knob needs a non-empty `choices:` list")
            if any(x is not None for x in (k.low, k.high, k.step)) or k.log:
                raise self._error(name, "a categorical knob takes only `choices:` (and `values:`)")
            missing = [c for c in k.choices if k.values is not None and c not in k.values]
            if missing:
                raise self._error(name, f"choices {missing} have no entry under `values:`")
            return
        if k.values is not None:
            raise self._error(name, "only a categorical knob takes `values:`")
        if k.choices is not None or k.low is None or k.high is None:
            raise self._error(name, f"an {k.type} knob needs `low:` and `high:` (no `choices:`)")
        if k.low > k.high:
            raise self._error(name, f"low ({k.low}) is above high ({k.high})")
        if k.log and (k.step is not None or k.low <= 0):
            raise self._error(name, "a log-scale knob needs low > 0 and no `step:`")
        if k.type == "int" and any(v is not None and v != int(v) for v in (k.low, k.high, k.step)):
            raise self._error(name, "an int knob needs whole-number low, high and step")
        if k.step is not None and k.step <= 0:
            raise self._error(name, "step must be positive")

    def _extremes(self, k: Knob) -> list[Any]:
        if k.type == "categorical":
            return [self._field_value(k, c) for c in k.choices or []]
        cast = int if k.type == "int" else float
        return [cast(k.low), cast(k.high)]

    def _config(self, kind: str, fields: dict[str, Any], where: str) -> Any:
        from compress.transforms.base import registry

        entry = self.spec.transforms.get(kind, TransformEntry())
        try:
            return registry()[kind].config(**{**entry.fixed, **fields})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise self._error(where, f"gives an invalid {kind} config ({problems})") from None

    def suggest(self, trial: Any, name: str | None = None) -> Recipe:
        """Define-by-run: ask `trial` (optuna Trial or FixedTrial) for each active knob."""
        return self.recipe(self.assign(trial), name or f"{self.name}-t{trial.number:04d}")

    def assign(
        self,
        trial: Any,
        names: Collection[str] | None = None,
        given: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Values of the knobs active under one another: a knob in `given` keeps its value,
        any other is asked of `trial` when `names` (all knobs when None) holds it. The two-level
        search asks a prefix's knobs of one study and its suffix's of another this way."""
        values: dict[str, Any] = {}
        for knob_name, k in self.spec.knobs.items():
            if not self._active(k, values):
                continue
            if given is not None and knob_name in given:
                values[knob_name] = given[knob_name]
            elif names is None or knob_name in names:
                values[knob_name] = self._ask(trial, knob_name, k)
        return values

    @staticmethod
    def _ask(trial: Any, name: str, k: Knob) -> Any:
        if k.type == "categorical":
            return trial.suggest_categorical(name, k.choices)
        if k.type == "int":
            step = int(k.step or 1)
            return trial.suggest_int(name, int(k.low), int(k.high), step=step, log=k.log)
        return trial.suggest_float(name, k.low, k.high, step=k.step, log=k.log)

    def _active(self, k: Knob, values: dict[str, Any]) -> bool:
        if not _matches(k.when, values):
            return False
        kind = k.sets.partition(".")[0] if k.sets else None
        return kind is None or _matches(self.spec.transforms[kind].when, values)

    def recipe(self, values: dict[str, Any], name: str) -> Recipe:
        """The Recipe for suggested knob values: included transforms in stage order."""
        from compress.recipe import Recipe
        from compress.transforms.base import registry

        fields: dict[str, dict[str, Any]] = {}
        for kind, entry in self.spec.transforms.items():
            if _matches(entry.when, values):
                fields[kind] = {}
        for knob_name, k in self.spec.knobs.items():
            if k.sets is not None and knob_name in values:
                kind, _, field = k.sets.partition(".")
                fields.setdefault(kind, {})[field] = self._field_value(k, values[knob_name])
        stage = {kind: spec.stage for kind, spec in registry().items()}
        configs = [self._config(kind, f, where=f"transforms.{kind}") for kind, f in fields.items()]
        configs.sort(key=lambda c: stage[c.kind])
        knobs = ", ".join(f"{k}={v}" for k, v in values.items())
        return Recipe(
            name=name, description=f"search space {self.name}: {knobs}", transforms=configs
        )

    @staticmethod
    def _field_value(k: Knob, choice: Any) -> Any:
        return k.values[choice] if k.values is not None else choice

    def grid(self, limit: int = 1_000_000) -> list[dict[str, Any]]:
        """Every valid knob assignment (for exhaustive evaluation); needs finite domains."""
        points: list[dict[str, Any]] = [{}]
        for knob_name, k in self.spec.knobs.items():
            domain = self._domain(knob_name, k)
            nxt = []
            for p in points:
                if self._active(k, p):
                    nxt.extend({**p, knob_name: v} for v in domain)
                else:
                    nxt.append(p)
                if len(nxt) > limit:
                    raise SpaceError(f"search space {self.source} has over {limit} points")
            points = nxt
        return points

    def _domain(self, name: str, k: Knob) -> list[Any]:
        if k.type == "categorical":
            return list(k.choices or [])
        if k.type == "int":
            return list(range(int(k.low), int(k.high) + 1, int(k.step or 1)))
        if k.step is None:
            raise self._error(name, "is continuous; give it a `step:` to enumerate a grid")
        n = int(round((k.high - k.low) / k.step))
        return [round(k.low + i * k.step, 10) for i in range(n + 1)]

    def size(self) -> int:
        return len(self.grid())

    def size_hint(self) -> str:
        try:
            return f"{len(self.grid(limit=100_000))} candidates"
        except SpaceError:
            return "continuous or very large"


def resolve_space(space: str | Path) -> Path:
    """A space file path, or the name of a shipped space like `miniature` (package data)."""
    from compress import shipped

    path = Path(space).expanduser()
    if path.is_file():
        return path
    found = shipped.find("space", str(space))
    if found is not None:
        return found
    raise SpaceError(
        f"search space {space!r} not found: give a YAML file or one of "
        f"{', '.join(shipped.space_names()) or 'the shipped names'} "
        "(`compress search --list-spaces`)"
    )


def load_space(space: str | Path) -> SearchSpace:
    """Read and validate a space (`yaml.safe_load` only); errors name the knob at fault."""
    path = resolve_space(space)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_space(data, str(path))


def parse_space(data: Any, source: str = "<space>") -> SearchSpace:
    if not isinstance(data, dict):
        raise SpaceError(f"search space {source}: expected a mapping at the top level")
    try:
        spec = SpaceFile.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise SpaceError(f"invalid search space {source}:\n" + "\n".join(lines)) from None
    if spec.sensitivity is not None:
        from compress.search.space_sensitivity import narrow

        spec = narrow(spec, source)
    return SearchSpace(spec, source)


def _in_domain(k: Knob, value: Any) -> bool:
    if k.type == "categorical":
        return value in (k.choices or [])
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if k.type == "int" and value != int(value):
        return False
    return k.low <= value <= k.high

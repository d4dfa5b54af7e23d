"""Recipe: the ordered transforms, what they recorded, scores and provenance; YAML I/O."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator
from pydantic import model_validator as _model_validator

from compress.errors import RecipeError
from compress.evaluate.settings import Scores  # noqa: F401  (a recipe's scores; re-exported)
from compress.fs import write_atomic
from compress.models.fingerprint import Fingerprint
from compress.transforms.base import Metadata, Stage, TransformConfig, config_adapter, registry

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Record(_Strict):
    """What one transform recorded when it ran (removed blocks, kept channels, seeds, ...)."""

    kind: str
    metadata: Metadata = Field(default_factory=dict)


class FusedLora(_Strict):
    """A LoRA fused into the base model's weights before the transforms ran (`--lora`)."""

    file: str
    sha256: str
    scale: float = 1.0


class Provenance(_Strict):
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    source_model: str | None = None
    fused_lora: FusedLora | None = None
    run_id: str | None = None
    trial_id: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)


class Recipe(_Strict):
    """An ordered, reusable compression: structure -> training -> numeric -> runtime transforms."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(min_length=1)
    description: str = ""
    base: Fingerprint | None = None  # None: applies to any architecture
    # Once applied: the call arguments the base model was sampled with before any transform (its
    # recorded defaults, e.g. the miniature's 20 steps): a saved folder does not hold them, and
    # loading sets them again before replaying the transforms.
    base_call: dict[str, Any] = Field(default_factory=dict)
    transforms: list[SerializeAsAny[TransformConfig]] = Field(min_length=1)
    records: list[Record] = Field(default_factory=list)
    scores: Scores | None = None
    provenance: Provenance = Field(default_factory=Provenance)

    @field_validator("transforms", mode="before")
    @classmethod
    def _configs(cls, value: Any) -> Any:
        return config_adapter().validate_python(value)

    @_model_validator(mode="after")
    def _order_and_records(self) -> Recipe:
        specs = registry()
        stages = [specs[t.kind].stage for t in self.transforms]
        for i in range(1, len(stages)):
            if stages[i] < stages[i - 1]:
                order = " -> ".join(s.name for s in Stage)
                raise ValueError(
                    f"transform {i} ({self.transforms[i].kind}, stage {stages[i].name}) comes "
                    f"after {self.transforms[i - 1].kind} (stage {stages[i - 1].name}); "
                    f"transforms must be ordered {order}"
                )
        if self.records and [r.kind for r in self.records] != [t.kind for t in self.transforms]:
            raise ValueError("records must name the same kinds, in the same order, as transforms")
        return self

    @property
    def native(self) -> bool:
        """True when every transform's result is expressible in standard diffusers configs (a
        transform records `native: false` where it was not on this model, e.g. a guidance
        embedding added to a transformer)."""
        specs = registry()
        configs = all(specs[t.kind].native and t.saves_natively() for t in self.transforms)
        return configs and not any(r.metadata.get("native") is False for r in self.records)

    def find(self, kind: str) -> TransformConfig | None:
        return next((t for t in self.transforms if t.kind == kind), None)

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _where(loc: tuple[Any, ...], data: Any) -> str:
    """Field path like `transforms[0].steps`, dropping pydantic's discriminator tags."""
    parts: list[str] = []
    for i, key in enumerate(loc):
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif i > 0 and isinstance(loc[i - 1], int) and key in registry():
            continue  # the union tag pydantic inserts after a list index
        else:
            parts.append(("." if parts else "") + str(key))
    return "".join(parts) or "recipe"


def explain(exc: ValidationError, source: str) -> RecipeError:
    """One readable line per problem: field path, the value given, what is allowed."""
    lines = []
    for err in exc.errors():
        given = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {_where(tuple(err['loc']), given)}: {msg}{shown}")
    return RecipeError(f"invalid recipe {source}:\n" + "\n".join(lines))


def parse_recipe(data: Any, source: str = "<data>") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"invalid recipe {source}: expected a mapping at the top level")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, source) from None


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read a recipe YAML with `safe_load` only: no tag can construct objects or run code.
    A name without a file, such as `dpmsolver-fast`, is a shipped preset."""
    from compress import shipped

    path = Path(path)
    if not path.is_file():
        found = shipped.find("recipe", str(path)) if path.suffix != ".yaml" else None
        if found is None:
            raise RecipeError(
                f"recipe file {path} does not exist (shipped presets: "
                f"{', '.join(shipped.recipe_names())}; `compress recipe list`)"
            )
        path = found
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(
            f"{path} is not a valid recipe YAML (only plain YAML is accepted): "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return parse_recipe(data, str(path))


def save_recipe(recipe: Recipe, path: str | os.PathLike[str]) -> None:
    write_atomic(path, recipe.to_yaml())

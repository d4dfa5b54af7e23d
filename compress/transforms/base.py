"""Transform configs and the registry that maps each config class to its apply function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from compress.context import RunContext

Metadata = dict[str, Any]


class Stage(IntEnum):
    """Transforms run in this order: change structure, train, change numerics, set the runtime."""

    structure = 0
    training = 1
    numeric = 2
    runtime = 3


class TransformConfig(BaseModel):
    """Plain data naming one transform and its parameters; subclasses fix `kind` as a Literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str

    def saves_natively(self) -> bool:
        """False where these parameters leave layers diffusers cannot save (the registry's
        `native` holds for the kind; a config may narrow it, e.g. a backend's own layers)."""
        return True


C = TypeVar("C", bound=TransformConfig)
ApplyFn = Callable[["DiffusionPipeline", Any, "RunContext"], Metadata]
RestoreFn = Callable[["DiffusionPipeline", Any, Metadata], None]


@dataclass(frozen=True)
class TransformSpec:
    kind: str
    config: type[TransformConfig]
    stage: Stage
    apply: ApplyFn
    # Replays recorded metadata exactly; None: re-run apply and require identical metadata.
    restore: RestoreFn | None
    # True when the transformed pipeline saves into standard diffusers configs and weights.
    native: bool
    # True when part of the effect lives outside saved configs (e.g. call defaults), so loading
    # an artifact replays `restore` on top of the saved folder.
    replay_on_load: bool
    # Loading an artifact calls this instead of `restore` (for training transforms whose weights
    # the folder holds but whose call defaults, e.g. steps and guidance, it does not).
    on_load: RestoreFn | None = None
    # Within a stage, lower runs first whatever the order a recipe lists them in (ties keep the
    # recipe's order): a sampler sets the call defaults a cache reads, compile wraps what the
    # others installed. Replay runs in the same order, so an artifact loads as it was applied.
    order: int = 0
    # What plain diffusers (DiffusionPipeline.from_pretrained) gives of this transform where it
    # falls short of compress.load; empty: the saved folder holds all of it (call arguments such
    # as steps and guidance are named apart, from the pipeline's call defaults).
    plain: str = ""
    # True when the transformed pipeline's images equal the untransformed one's within float
    # rounding (compile): its quality is known before it runs, so the search measures it only on
    # candidates it could bring onto the front (search.levels: finishing knobs).
    neutral: bool = False


_REGISTRY: dict[str, TransformSpec] = {}
_ADAPTER: TypeAdapter | None = None


def register_transform(
    config: type[C],
    *,
    stage: Stage,
    native: bool = True,
    replay_on_load: bool = False,
    restore: RestoreFn | None = None,
    on_load: RestoreFn | None = None,
    order: int = 0,
    plain: str = "",
    neutral: bool = False,
) -> Callable[[ApplyFn], ApplyFn]:
    """Register `apply(pipe, cfg, ctx) -> Metadata` for `config` at `stage`."""
    kind_field = config.model_fields.get("kind")
    kind = kind_field.default if kind_field is not None else None
    if not isinstance(kind, str):
        raise TypeError(f"{config.__name__}.kind needs a Literal default naming the transform")

    def decorator(fn: ApplyFn) -> ApplyFn:
        global _ADAPTER
        if kind in _REGISTRY and _REGISTRY[kind].config is not config:
            raise ValueError(f"transform kind {kind!r} is registered twice")
        _REGISTRY[kind] = TransformSpec(
            kind, config, stage, fn, restore, native, replay_on_load, on_load, order, plain, neutral
        )
        _ADAPTER = None
        return fn

    return decorator


def registry() -> dict[str, TransformSpec]:
    """Every registered transform by kind (importing the built-in ones first)."""
    import compress.transforms  # noqa: F401  (registers the built-ins)

    return dict(_REGISTRY)


def spec_of(cfg: TransformConfig) -> TransformSpec:
    return registry()[cfg.kind]


def check_replay(
    kind: str, recorded: Metadata, got: Metadata, *, only_recorded: bool = False, why: str = ""
) -> None:
    """The one comparison of a replay with its record: raise RestoreMismatch naming each key whose
    value differs (`only_recorded`: the keys the record holds; else those of either side)."""
    from compress.errors import RestoreMismatch

    keys = recorded if only_recorded else {*recorded, *got}
    diff = sorted(k for k in keys if got.get(k) != recorded.get(k))
    if diff:
        raise RestoreMismatch(
            f"{kind}: recorded {', '.join(f'{k}={recorded.get(k)!r}' for k in diff)} but this "
            f"pipeline gives {', '.join(f'{k}={got.get(k)!r}' for k in diff)}{why}"
        )


def run_order(configs: list[TransformConfig]) -> list[int]:
    """Indices of `configs` in the order they run: by stage, then by the registry's `order`,
    then as listed."""
    specs = [spec_of(c) for c in configs]
    return sorted(range(len(specs)), key=lambda i: (specs[i].stage, specs[i].order, i))


def config_adapter() -> TypeAdapter:
    """Validator for a list of transform configs, discriminated by `kind`."""
    global _ADAPTER
    specs = registry()
    if _ADAPTER is None:
        configs = tuple(s.config for s in specs.values())
        if len(configs) == 1:  # a discriminator needs a union; one class validates `kind` itself
            _ADAPTER = TypeAdapter(list[configs[0]])
        else:
            union = Union[configs]  # noqa: UP007
            _ADAPTER = TypeAdapter(list[Annotated[union, Field(discriminator="kind")]])
    return _ADAPTER

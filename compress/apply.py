"""Replay a recipe on a pipeline (`apply_recipe`) or its recorded metadata exactly (`restore`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.context import RunContext
from compress.errors import FingerprintMismatch, RecipeError, RestoreMismatch
from compress.models.fingerprint import fingerprint
from compress.recipe import Recipe, Record
from compress.transforms.base import Metadata, Stage, TransformConfig, run_order, spec_of
from compress.versions import library_versions

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def check_fingerprint(pipe: DiffusionPipeline, recipe: Recipe) -> None:
    """Raise, listing every differing field, if the recipe was made for another architecture."""
    if recipe.base is None:
        return
    diffs = recipe.base.differences(fingerprint(pipe))
    if diffs:
        raise FingerprintMismatch(
            f"recipe {recipe.name!r} was made for another architecture; differing fields:\n  "
            + "\n  ".join(diffs)
        )


def apply_recipe(pipe: DiffusionPipeline, recipe: Recipe, ctx: RunContext | None = None) -> Recipe:
    """Run each transform on `pipe` in place; return the recipe with fresh records and base.

    Data-dependent choices (channel importance, calibration) are recomputed on these weights.
    Transforms run in `run_order` (a recipe may list runtime transforms in any order); records
    stay in the recipe's order.
    """
    from compress.generate import call_defaults

    ctx = ctx or RunContext()
    check_fingerprint(pipe, recipe)
    base, base_call = fingerprint(pipe), call_defaults(pipe)
    _keep_teacher(pipe, recipe, ctx)
    metadata: dict[int, Metadata] = {}
    for i in run_order(recipe.transforms):
        metadata[i] = run_transform(pipe, recipe.transforms[i], ctx)
    records = [Record(kind=c.kind, metadata=metadata[i]) for i, c in enumerate(recipe.transforms)]
    provenance = recipe.provenance.model_copy(update={"versions": library_versions()})
    update = {"base": base, "base_call": base_call, "records": records, "provenance": provenance}
    return recipe.model_copy(update=update)


def run_transform(pipe: DiffusionPipeline, cfg: TransformConfig, ctx: RunContext) -> Metadata:
    """Apply one transform in place, its random draws seeded by the context (RunContext.seeded)."""
    with ctx.seeded():
        return spec_of(cfg).apply(pipe, cfg, ctx)


def _keep_teacher(pipe: DiffusionPipeline, recipe: Recipe, ctx: RunContext) -> None:
    """Training transforms distil from the uncompressed model: keep a frozen copy of it."""
    import copy

    if ctx.teacher is None and any(spec_of(c).stage == Stage.training for c in recipe.transforms):
        ctx.teacher = copy.deepcopy(pipe)


def restore(
    pipe: DiffusionPipeline,
    recipe: Recipe,
    *,
    only_replayed: bool = False,
    ctx: RunContext | None = None,
) -> None:
    """Replay the recorded metadata exactly; raise where the model does not match it.

    With `only_replayed`, only transforms whose effect is not saved in diffusers configs run
    (used when loading an artifact whose folder already holds the transformed structure).
    Transforms without a restore function are re-run with `ctx` (their data and teacher).
    """
    ctx = ctx or RunContext()
    if not only_replayed and any(spec_of(c).restore is None for c in recipe.transforms):
        _keep_teacher(pipe, recipe, ctx)
    if len(recipe.records) != len(recipe.transforms):
        raise RecipeError(
            f"recipe {recipe.name!r} has no recorded metadata for its transforms; "
            "use apply (which computes it) instead of restore"
        )
    for i in run_order(recipe.transforms):
        cfg, record = recipe.transforms[i], recipe.records[i]
        spec = spec_of(cfg)
        if only_replayed and spec.on_load is not None:
            spec.on_load(pipe, cfg, record.metadata)
            continue
        if only_replayed and spec.native and not spec.replay_on_load:
            continue
        if spec.restore is not None:
            spec.restore(pipe, cfg, record.metadata)
            continue
        got = run_transform(pipe, cfg, ctx)
        if got != record.metadata:
            keys = sorted(
                k for k in {*got, *record.metadata} if got.get(k) != record.metadata.get(k)
            )
            raise RestoreMismatch(
                f"{cfg.kind}: replay gives metadata that differs from the recipe in {keys}; "
                "the model is not the one this recipe was recorded on"
            )

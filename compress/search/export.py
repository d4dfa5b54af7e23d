"""`compress export RUN ID`: a search trial's candidate written as an artifact without training
again: its trained prefix comes from the run's prefix cache (the entry the trial itself built or
loaded), the rest is replayed from the trial's records, and the images it was scored on can be
regenerated and compared (same prompts, seeds, settings and threads).

`compress apply` of the same recipe would train from zero (hours at SD scale) and give another
model than the one the front's scores describe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.search.ledger import TrialRecord, read_records, trial_dir

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from compress.recipe import Recipe
    from compress.search.config import SearchConfig


@dataclass
class Exported:
    """What an export wrote and how it compares with the trial."""

    folder: Path
    trial: int
    recipe: str
    cache_entry: Path | None  # None: a training-free candidate, replayed on the model itself
    training_s: float  # what the trial's prefix cost to train (what the export did not spend)
    seconds: dict[str, float] = field(default_factory=dict)  # load, replay, save, check
    call: dict[str, Any] = field(default_factory=dict)  # the artifact's call defaults
    checked: int = 0  # images regenerated and compared
    max_level_diff: int | None = None  # largest 8-bit difference (0: identical)
    differing_pixels: float | None = None  # fraction of 8-bit values that differ


def find_trial(run: Path, which: str) -> TrialRecord:
    """The finished trial `which` names: a trial number, a recipe name, or a recipe file."""
    records = read_records(run)
    stem = Path(which).stem
    for r in records:
        if which.isdigit() and r.number == int(which) or r.recipe in (which, stem):
            if r.state != "complete":
                raise CompressError(
                    f"trial {r.number} of {run} is {r.state}: only fully evaluated trials "
                    "(state complete) have scores to export"
                )
            if r.duplicate_of is not None:  # same knobs: the earlier trial holds the candidate
                return find_trial(run, str(r.duplicate_of))
            return r
    front = sorted((run / "recipes").glob("*.yaml"))
    raise CompressError(
        f"{run} has no trial {which!r}; give a trial number or a front recipe name "
        f"({', '.join(p.stem for p in front) or 'the front is empty'})"
    )


def export_trial(
    run: str | Path, which: str, out: str | Path, *, overwrite: bool = False, check: bool = True
) -> Exported:
    """Write trial `which` of `run` as an artifact at `out`; with `check`, regenerate its scored
    images and compare them with the ones it saved."""
    from compress.artifact import save_artifact
    from compress.generate import call_defaults
    from compress.recipe import load_recipe
    from compress.search.config import resume_config

    run = Path(run)
    cfg, _ = resume_config(run)
    record = find_trial(run, which)
    folder = trial_dir(run, record.number)
    recipe = load_recipe(folder / "recipe.yaml")
    if len(recipe.records) != len(recipe.transforms):
        raise CompressError(f"{folder / 'recipe.yaml'} holds no records: the trial did not finish")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:  # fail before loading anything
        raise CompressError(f"{out} is not empty; pass --overwrite or a new --out")
    t0 = time.perf_counter()
    pipe, entry, training_s = _prefix(cfg, run, record, recipe)
    t1 = time.perf_counter()
    _replay_rest(pipe, recipe, cfg, entry is not None)
    t2 = time.perf_counter()
    save_artifact(pipe, recipe, out, overwrite=overwrite)
    t3 = time.perf_counter()
    done = Exported(out, record.number, recipe.name, entry, training_s)
    done.seconds = {"load": t1 - t0, "replay": t2 - t1, "save": t3 - t2}
    done.call = call_defaults(pipe)
    if check:
        _compare(done, pipe, cfg, folder)
        done.seconds["check"] = time.perf_counter() - t3
    return done


def _prefix(
    cfg: SearchConfig, run: Path, record: TrialRecord, recipe: Recipe
) -> tuple[DiffusionPipeline, Path | None, float]:
    """The pipeline after the recipe's structure and training: the trial's cache entry when it
    trains, else the model itself (structure is replayed with the rest)."""
    from compress.artifact import load_artifact, load_model
    from compress.recipe import load_recipe
    from compress.search.build import split
    from compress.search.cache import CorruptEntry, PrefixCache

    plan = split(recipe)
    device = cfg.device
    if not plan.trains:
        return load_model(cfg.model, device=device, dtype=cfg.dtype), None, 0.0
    prefix = [*plan.structure, *plan.training]
    keys = [e["key"] for e in [*record.cache.get("hits", []), *record.cache.get("misses", [])]]
    cache = PrefixCache(cfg.cache_dir)  # --cache, or RUN/cache wherever RUN is now
    for key in reversed(keys):  # the last key is the whole prefix the trial scored
        try:
            found = cache.lookup(key)
        except CorruptEntry as exc:
            raise CompressError(f"{exc}; `compress apply` retrains it") from None
        if found is None:
            continue
        entry, meta = found
        stored = load_recipe(entry / "recipe.yaml")
        if stored.transforms != prefix:
            continue  # an earlier rung's entry, or another training target of the chain
        if stored.records != recipe.records[: len(prefix)]:
            raise CompressError(
                f"cache entry {entry} holds the prefix of trial {record.number} but recorded "
                "other metadata than the trial did; it is not the model the trial scored"
            )
        pipe = load_artifact(entry, device=device, dtype=cfg.dtype)
        return pipe, entry, float(meta.get("training_s_total", 0.0))
    raise CompressError(
        f"the prefix cache {cache.root} no longer holds the trained prefix of trial "
        f"{record.number} ({', '.join(t.kind for t in prefix)}); it was deleted or built "
        "elsewhere: `compress apply` trains it again"
    )


def _replay_rest(pipe: DiffusionPipeline, recipe: Recipe, cfg: SearchConfig, cached: bool) -> None:
    """The transforms after the cached prefix (all of them for a training-free candidate),
    replayed exactly from what the trial recorded."""
    from compress.apply import restore
    from compress.context import RunContext
    from compress.search.build import split

    plan = split(recipe)
    skip = len(plan.structure) + len(plan.training) if cached else 0
    rest = recipe.model_copy(
        update={"transforms": recipe.transforms[skip:], "records": recipe.records[skip:]}
    )
    prompts = Path(cfg.prompts).read_text().splitlines() if cfg.prompts else []
    data = Path(cfg.data) if cfg.data else None
    ctx = RunContext(device=cfg.device, data=data, prompts=[p for p in prompts if p.strip()])
    restore(pipe, rest, ctx=ctx)


def _compare(done: Exported, pipe: DiffusionPipeline, cfg: SearchConfig, folder: Path) -> None:
    """Regenerate the trial's images (its prompts, seeds, settings and threads) and compare."""
    import numpy as np
    from PIL import Image

    from compress.evaluate.run import generate_images, place
    from compress.search.staging import metric_for

    saved = sorted((folder / "images").glob("[0-9]*.png"))
    if not saved:
        raise CompressError(f"{folder}/images holds no images to compare with; pass --no-check")
    settings = cfg.eval_settings()
    prompts, seeds = metric_for(settings, cfg.metric_options).prompts(settings.num_prompts)
    seeds = [s + settings.seed for s in seeds]
    place(pipe, settings)
    images = generate_images(pipe, prompts[: len(saved)], seeds[: len(saved)], settings)
    new = np.stack([np.asarray(im.convert("RGB"), dtype=np.int16) for im in images])
    old = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in saved])
    diff = np.abs(new - old)
    done.checked = len(saved)
    done.max_level_diff = int(diff.max())
    done.differing_pixels = float((diff > 0).mean())


def summary_lines(done: Exported) -> list[str]:
    """What the console prints about an export."""
    total = sum(done.seconds.values())
    lines = [f"exported trial {done.trial} ({done.recipe}) in {total:.1f} s"]
    if done.cache_entry is not None:
        share = f" ({100 * total / done.training_s:.1f}% of it)" if done.training_s else ""
        lines.append(
            f"trained prefix from the prefix cache ({done.cache_entry.parent.name}): "
            f"{done.training_s:.0f} s of training not spent again{share}"
        )
    if done.max_level_diff is None:
        lines.append("images not compared (--no-check)")
    elif done.max_level_diff == 0:
        lines.append(f"its {done.checked} scored images reproduce exactly (same prompts and seeds)")
    else:
        lines.append(
            f"its {done.checked} scored images differ by up to {done.max_level_diff} of 255 in "
            f"{100 * done.differing_pixels:.3f}% of values"
        )
    return lines

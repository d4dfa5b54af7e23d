"""The prefix cache and rungs: trained prefixes reused across trials, rungs resumed from their
checkpoints, corrupt entries retrained, first writer wins."""

from __future__ import annotations

import logging

import pytest

from compress.recipe import Recipe
from compress.search.build import Builder, rungs_for, split
from compress.search.cache import CorruptEntry, PrefixCache

LOG = logging.getLogger("test")
DISTILL = {
    "kind": "distill",
    "steps": 4,
    "batch_size": 2,
    "samples": 4,
    "teacher_steps": 2,
    "data": "prompts",
}
RECIPE = Recipe(
    name="r",
    transforms=[
        {"kind": "prune_blocks", "remove": ["down_blocks.1.1", "up_blocks.0.1", "mid_block"]},
        DISTILL,
        {"kind": "sampler", "steps": 2, "guidance_scale": 1.0},
    ],
)


def _builder(tiny_dir, cache, trial: int) -> Builder:
    from compress.artifact import load_artifact
    from compress.models.loading import load_pipeline

    def load(folder=None):
        return load_artifact(folder) if folder else load_pipeline(str(tiny_dir))

    return Builder(
        load=load,
        context={"prompts": ["a red digit", "a blue digit"]},
        cache=cache,
        weights="w",
        data={"prompts": 1},
        versions={"v": "1"},
        trial=trial,
        log=LOG,
    )


def _image(pipe):
    from compress.generate import generate

    return generate(pipe, ["a red digit"], [0], height=16, width=16, output_type="np")


def test_rungs_resume_and_a_second_trial_reuses_the_trained_prefix(tiny_dir, tmp_path):
    import numpy as np

    cache = PrefixCache(tmp_path / "cache")
    plan = split(RECIPE)
    assert rungs_for(plan, [0.5, 1.0]) == [0.5, 1.0]
    assert rungs_for(split(Recipe(name="s", transforms=[RECIPE.transforms[2]])), [0.5]) == [1.0]
    first = _builder(tiny_dir, cache, trial=0)
    first.candidate(plan, 0.5, parent=False)
    pipe, recipe, _ = first.candidate(plan, 1.0, parent=False)
    trained = [(m["steps"], m["trained_steps"]) for m in first.record.misses]
    assert trained == [(2, 2), (4, 2)]  # the second rung resumed from the first's checkpoint
    assert first.record.hits == []  # its own entries are no hits
    assert [r.kind for r in recipe.records] == ["prune_blocks", "distill", "sampler"]
    assert recipe.records[1].metadata["steps"] == 4
    second = _builder(tiny_dir, cache, trial=1)
    assert second.cached_fraction(plan)
    again, _, _ = second.candidate(plan, 1.0, parent=False)
    assert second.record.misses == [] and len(second.record.hits) == 1
    assert second.record.hits[0]["seconds"] > 0  # the training it did not repeat
    np.testing.assert_allclose(_image(again), _image(pipe), atol=1e-5)
    # An entry whose files no longer match their digests is moved aside and retrained.
    key = second.record.hits[0]["key"]
    weights = next((cache.entry(key) / "artifact" / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptEntry, match="do not match"):
        cache.lookup(key)
    assert not cache.entry(key).exists() and any((cache.root / "corrupt").iterdir())
    third = _builder(tiny_dir, cache, trial=2)
    assert not third.cached_fraction(plan)
    third.candidate(plan, 1.0, parent=False)
    assert third.record.hits == [] and [m["key"] for m in third.record.misses] == [key]
    assert cache.lookup(key) is not None


def test_first_writer_wins(tiny_pipe, tmp_path):
    cache = PrefixCache(tmp_path)
    recipe = Recipe(name="p", transforms=[{"kind": "sampler"}])
    cache.store("k", tiny_pipe, recipe, {"trial": 1})
    cache.store("k", tiny_pipe, recipe, {"trial": 2})
    _, meta = cache.lookup("k")
    assert meta["trial"] == 1 and not list(tmp_path.glob(".k.partial-*"))

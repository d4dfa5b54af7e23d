"""Teacher-drawn training data is drawn once per (teacher, prompts, sampler, count, seed), shared
through the store, streamed from disk, resumed after an interruption and redrawn when corrupt."""

from __future__ import annotations

import pytest
import torch

from compress.context import RunContext
from compress.evaluate.settings import EvalSettings
from compress.train import teacher_data
from compress.train.data import build_dataset

PROMPTS = ["a red digit", "a blue digit", "a green digit"]


def _items(dataset) -> list[dict[str, torch.Tensor]]:
    return [dataset[i] for i in range(len(dataset))]


def test_drawn_once_shared_and_equal_to_drawing_in_memory(tiny_pipe, tmp_path, counted):
    kw = {"n": 40, "seed": 3, "prompts": PROMPTS, "teacher": tiny_pipe, "teacher_steps": 2}
    memory, info = build_dataset(tiny_pipe, "prompts", **kw)
    assert sum(counted) == 40
    first, shared_info = build_dataset(tiny_pipe, "prompts", store=tmp_path, **kw)
    second, _ = build_dataset(tiny_pipe, "prompts", store=tmp_path, **kw)
    assert sum(counted) == 80  # the second trial drew nothing
    assert shared_info == info  # what the transform records does not say where data came from
    assert isinstance(second, teacher_data.StreamedLatents) and len(second) == 40
    for got, want in zip(_items(second), _items(memory), strict=True):
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    torch.testing.assert_close(second.uncond, memory.uncond, rtol=0, atol=0)
    entry = next(p for p in tmp_path.iterdir() if (p / "entry.json").is_file())
    names = sorted(p.name for p in entry.iterdir())
    assert names.count("cond-00000.safetensors") == 1 and "latents-00002.safetensors" in names
    # another count, seed or teacher is another dataset
    build_dataset(tiny_pipe, "prompts", store=tmp_path, **{**kw, "seed": 4})
    assert sum(counted) == 120


def test_an_interrupted_draw_resumes_and_a_corrupt_one_is_redrawn(tiny_pipe, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_data, "SHARD", 16)
    real, seeds, interrupt = teacher_data.teacher_latents, [], [True]

    def flaky(teacher, prompts, seed, steps):
        seeds.append(seed)
        if interrupt[0] and len(seeds) == 3:  # Ctrl-C while the third shard is drawn
            raise KeyboardInterrupt
        return real(teacher, prompts, seed, steps)

    monkeypatch.setattr(teacher_data, "teacher_latents", flaky)
    captions = [PROMPTS[i % 3] for i in range(40)]
    with pytest.raises(KeyboardInterrupt):
        teacher_data.drawn_dataset(tmp_path, tiny_pipe, captions, seed=0, steps=2)
    assert not any((p / "entry.json").is_file() for p in tmp_path.iterdir())
    interrupt[0] = False
    data = teacher_data.drawn_dataset(tmp_path, tiny_pipe, captions, seed=0, steps=2)
    assert len(data) == 40 and seeds == [0, 16, 32, 32]  # only the lost shard drawn again
    shard = data.folder / "latents-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)  # a damaged tail
    again = teacher_data.drawn_dataset(tmp_path, tiny_pipe, captions, seed=0, steps=2)
    assert len(again) == 40 and len(seeds) == 7 and any((tmp_path / "corrupt").iterdir())


def test_a_search_trial_gets_the_shared_store(tmp_path):
    from compress.search.trial import TrialJob, _builder

    job = TrialJob(
        run=str(tmp_path),
        run_id="r",
        model="m",
        space={},
        space_source="s",
        settings=EvalSettings(),
        baseline_settings=EvalSettings(),
        stage_prompts=None,
        cache_dir=str(tmp_path / "cache"),
        weights="ab" * 32,
    )
    import logging

    builder = _builder(job, 0, logging.getLogger("t"))
    ctx = RunContext(**builder._context)
    assert ctx.data_cache == tmp_path / "cache" / "data" and ctx.teacher_digest == "ab" * 32

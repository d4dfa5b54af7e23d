"""Shared fixtures: tiny pipelines built in code, saved with save_pretrained (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress._quiet import import_heavy

import_heavy()


def pytest_configure(config: pytest.Config) -> None:
    """Tiny models run fastest on one thread, and a second OpenMP thread waiting for a busy
    core slows every operator many times over: each test process (pytest-xdist) keeps to one."""
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from a clean dynamo cache: in one xdist worker the compile tests of
    many models would otherwise add up past dynamo's recompile limit (fullgraph: a failure)."""
    yield
    import sys

    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()


@pytest.fixture
def tiny_pipe():
    """A fresh SD1.x-shaped random pipeline (UNet channels 32/64, two layers per block)."""
    from compress.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline saved with save_pretrained: a local checkpoint folder."""
    from compress.models.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny") / "pipe"
    build_tiny_pipeline().save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from compress.models.tiny import build_tiny_sdxl_pipeline

    path = tmp_path_factory.mktemp("tiny_sdxl") / "pipe"
    build_tiny_sdxl_pipeline().save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture
def counted(monkeypatch):
    """The teacher's draws, counted (samples per call), with the store's shards a batch long."""
    calls: list[int] = []
    from compress.train import teacher_data

    real = teacher_data.teacher_latents

    def teacher_latents(teacher, prompts, seed, steps):
        calls.append(len(prompts))
        return real(teacher, prompts, seed, steps)

    monkeypatch.setattr(teacher_data, "teacher_latents", teacher_latents)
    # several shards from a few samples; a multiple of the teacher's batch of 16, as SHARD is, so
    # that every image is drawn in the same batch as without the store (identical floats)
    monkeypatch.setattr(teacher_data, "SHARD", 16)
    return calls

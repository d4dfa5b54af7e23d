"""RunContext: what a transform needs at run time but a recipe must never hold."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


@dataclass
class RunContext:
    """The teacher, data, device and output folder of one apply or search trial."""

    device: str = "cpu"
    seed: int = 0
    teacher: DiffusionPipeline | None = None
    # Calibration / training data: a folder of images with captions, or prompts alone.
    data: Path | None = None
    prompts: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    # Where teacher-drawn training data is shared (compress.train.teacher_data), and the digest
    # of the teacher's weight files when known (else its weights are hashed in memory).
    data_cache: Path | None = None
    teacher_digest: str | None = None
    # Free-form handles later transforms share (e.g. cached calibration activations).
    cache: dict[str, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def seeded(self) -> Iterator[None]:
        """Torch's global generators seeded with `seed` inside, the caller's state restored
        after. Every transform runs in one, so that its draws (a LoRA adapter's initialisation,
        a new layer's default init) do not depend on the process: torch seeds its default
        generator at random on start-up, and a prefix from the search's cache must continue
        exactly as the uncached recipe would."""
        import torch

        cuda = torch.cuda.is_initialized()
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else []):
            torch.manual_seed(self.seed)
            yield

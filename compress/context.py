"""RunContext: what a transform needs at run time but a recipe must never hold."""

from __future__ import annotations

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
    # Free-form handles later transforms share (e.g. cached calibration activations).
    cache: dict[str, Any] = field(default_factory=dict)

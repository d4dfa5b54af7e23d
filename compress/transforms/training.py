"""The fields every training transform shares (recovery, the distilled students, QAT): how long
and how it optimises, and where its training data comes from.

data: `images` (the run's folder of images with captions), `prompts` (the teacher draws the
run's prompts), `miniature-digits` (the built-in miniature's training set), or `auto`: images if
a folder is given, else prompts if given, else the digits when the pipeline is the miniature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from compress.transforms.base import TransformConfig

if TYPE_CHECKING:
    from compress.train import TrainSettings

DataSource = Literal["auto", "images", "prompts", "miniature-digits"]


class TrainingConfig(TransformConfig):
    steps: int = Field(200, ge=1, le=1_000_000)  # optimizer updates
    batch_size: int = Field(16, ge=1, le=4096)
    grad_accum: int = Field(1, ge=1, le=1024)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    data: DataSource = "auto"
    samples: int = Field(256, ge=1, le=1_000_000)  # images to generate or draw (not `images`)
    teacher_steps: int = Field(20, ge=1, le=1000)  # sampler steps per teacher-generated image

    def train_settings(self, seed: int) -> TrainSettings:
        """The shared training loop's settings from these fields."""
        from compress.train import TrainSettings

        return TrainSettings(
            steps=self.steps,
            lr=self.lr,
            grad_accum=self.grad_accum,
            mixed_precision=self.mixed_precision,
            seed=seed,
            description=self.kind,
        )

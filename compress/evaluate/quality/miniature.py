"""The miniature model's own judge as a metric (not HPSv2: a judge trained on composed digits).

Scalar: the judge's `combined` = adherence - 0.01 x realism Frechet distance; parts: `adherence`
(mean probability of each attribute a prompt names), `realism_fd` (lower is better) and
`attr.<name>` per attribute.
"""

from __future__ import annotations

from typing import Any

from compress.evaluate.prompts import first
from compress.evaluate.quality import check_pairs


class MiniatureMetric:
    """Scores the built-in miniature pipeline's images on its fixed evaluation prompts and seeds."""

    name = "miniature"
    higher_is_better = True

    def __init__(self, device: str = "cpu", weights: str | None = None) -> None:
        self.device = device  # the judge is a small CNN and runs on CPU
        self.weights = weights  # judge safetensors; None = the shipped file
        self._judge: Any = None

    @property
    def version(self) -> str:
        from compress.models.miniature.judge import JUDGE_VERSION
        from compress.models.miniature.prompts import PROMPT_SET_VERSION

        return f"{JUDGE_VERSION}/{PROMPT_SET_VERSION}"

    def prompts(self, n: int | None = None) -> tuple[list[str], list[int]]:
        from compress.models.miniature.prompts import EVAL_PROMPTS, EVAL_SEEDS

        prompts = first(list(EVAL_PROMPTS), n, "the miniature evaluation set")
        return prompts, list(EVAL_SEEDS[: len(prompts)])

    def score(
        self, images: list[Any], prompts: list[str], reference_images: list[Any] | None = None
    ) -> tuple[float, dict[str, float]]:
        check_pairs(images, prompts)
        if self._judge is None:
            from compress.models.miniature.judge import MiniatureJudge

            self._judge = MiniatureJudge.load(self.weights)
        result = self._judge.score(images, prompts)
        parts = {"adherence": float(result.adherence), "realism_fd": float(result.realism_fd)}
        parts |= {f"attr.{k}": float(v) for k, v in result.per_attribute.items()}
        return float(result.combined), parts

"""PickScore and CLIPScore through transformers' CLIPModel, from a local folder or a hub id.

- pickscore (Kirstain et al. 2023): logit_scale.exp() x cosine(image, prompt) with the PickScore_v1
  weights; COMPRESS_PICKSCORE_MODEL (default yuvalkirstain/PickScore_v1) and
  COMPRESS_PICKSCORE_PROCESSOR (default: the model folder when it holds a processor, else
  laion/CLIP-ViT-H-14-laion2B-s32B-b79K, the processor PickScore was trained with).
- clip (Hessel et al. 2021, with w = 100 as torchmetrics does): 100 x max(cosine, 0);
  COMPRESS_CLIP_MODEL (default openai/clip-vit-large-patch14).
Both use the general prompt set, or a prompt file (`prompts=` / COMPRESS_EVAL_PROMPTS).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import CompressError
from compress.evaluate.prompts import GENERAL_PROMPTS, GENERAL_VERSION, first, load_prompt_file
from compress.evaluate.quality import check_pairs

PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class _CLIPBased:
    name = ""
    higher_is_better = True
    model_env = ""
    default_model = ""
    processor_env: str | None = None

    def __init__(
        self,
        device: str = "cpu",
        weights: str | None = None,
        prompts: str | None = None,
        processor: str | None = None,
    ) -> None:
        self.device = device
        self.source = weights or os.environ.get(self.model_env) or self.default_model
        env_proc = os.environ.get(self.processor_env) if self.processor_env else None
        self.processor_source = processor or env_proc or self._default_processor()
        self._prompt_file = prompts or os.environ.get("COMPRESS_EVAL_PROMPTS")
        self._loaded: tuple[Any, Any] | None = None

    def _default_processor(self) -> str:
        return self.source

    def _prompt_set(self) -> tuple[list[str], str]:
        if self._prompt_file:
            return load_prompt_file(self._prompt_file)
        return GENERAL_PROMPTS, GENERAL_VERSION

    @property
    def version(self) -> str:
        return f"{self.name}-1/{Path(self.source).name}/{self._prompt_set()[1]}"

    def prompts(self, n: int | None = None) -> tuple[list[str], list[int]]:
        prompts = first(self._prompt_set()[0], n, f"the {self.name} prompt set")
        return prompts, list(range(len(prompts)))

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from transformers import CLIPModel, CLIPProcessor

            try:
                model = CLIPModel.from_pretrained(
                    self.source, local_files_only=Path(self.source).is_dir()
                )
                proc = CLIPProcessor.from_pretrained(
                    self.processor_source, local_files_only=Path(self.processor_source).is_dir()
                )
            except (OSError, ValueError) as exc:
                raise CompressError(
                    f"{self.name}: could not load the CLIP model {self.source!r} / processor "
                    f"{self.processor_source!r} ({exc}); pass a local folder saved with "
                    f"save_pretrained via --weights or {self.model_env}"
                ) from exc
            self._loaded = (model.to(self.device).eval(), proc)
        return self._loaded

    def cosines(self, images: list[Any], prompts: list[str]) -> tuple[np.ndarray, float]:
        """Per-pair cosine of CLIP image and text embeddings, and the model's logit scale."""
        import torch

        model, proc = self._load()
        max_len = model.config.text_config.max_position_embeddings  # long prompts are truncated
        cos: list[float] = []
        for i in range(0, len(images), 16):
            rgb = [im.convert("RGB") for im in images[i : i + 16]]
            inputs = proc(
                text=prompts[i : i + 16],
                images=rgb,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_len,
            )
            with torch.inference_mode():
                out = model(**{k: v.to(self.device) for k, v in inputs.items()})
            # CLIPModel.forward returns L2-normalised embeddings.
            cos += (out.image_embeds * out.text_embeds).sum(-1).float().cpu().tolist()
        return np.asarray(cos), float(model.logit_scale.detach().exp())

    def score(
        self, images: list[Any], prompts: list[str], reference_images: list[Any] | None = None
    ) -> tuple[float, dict[str, float]]:
        check_pairs(images, prompts)
        per_image = self.per_image(*self.cosines(images, prompts))
        return float(per_image.mean()), {"std": float(per_image.std())}

    def per_image(self, cos: np.ndarray, logit_scale: float) -> np.ndarray:
        raise NotImplementedError


class PickScoreMetric(_CLIPBased):
    name = "pickscore"
    model_env = "COMPRESS_PICKSCORE_MODEL"
    default_model = "yuvalkirstain/PickScore_v1"
    processor_env = "COMPRESS_PICKSCORE_PROCESSOR"

    def _default_processor(self) -> str:
        folder = Path(self.source)
        names = ("preprocessor_config.json", "processor_config.json")  # transformers 4 / 5
        return self.source if any((folder / n).is_file() for n in names) else PICKSCORE_PROCESSOR

    def per_image(self, cos: np.ndarray, logit_scale: float) -> np.ndarray:
        return logit_scale * cos


class CLIPScoreMetric(_CLIPBased):
    name = "clip"
    model_env = "COMPRESS_CLIP_MODEL"
    default_model = "openai/clip-vit-large-patch14"

    def per_image(self, cos: np.ndarray, logit_scale: float) -> np.ndarray:
        return 100.0 * np.maximum(cos, 0.0)

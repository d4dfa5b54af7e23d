"""Quality metrics by name: each fixes its prompts and seeds and scores a set of images.

| name      | what it is                                                  | higher is better |
|-----------|-------------------------------------------------------------|------------------|
| miniature | the built-in miniature model's judge (adherence - realism)  | yes              |
| hpsv2     | Human Preference Score v2 / v2.1 (Wu et al. 2023), 100 cos  | yes              |
| pickscore | PickScore (Kirstain et al. 2023): logit scale x cosine      | yes              |
| clip      | CLIPScore as 100 max(cos, 0) (Hessel et al. 2021, w = 100)  | yes              |
| fidelity  | mean SSIM to the uncompressed pipeline's images (+ PSNR)    | yes              |
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Protocol

from compress.errors import CompressError
from compress.evaluate.settings import METRICS

# name -> "module:class"; modules import their heavy dependencies only when used.
_CLASSES = {
    "miniature": "compress.evaluate.quality.miniature:MiniatureMetric",
    "hpsv2": "compress.evaluate.quality.hpsv2:HPSv2Metric",
    "pickscore": "compress.evaluate.quality.clip:PickScoreMetric",
    "clip": "compress.evaluate.quality.clip:CLIPScoreMetric",
    "fidelity": "compress.evaluate.quality.fidelity:FidelityMetric",
}
assert tuple(_CLASSES) == METRICS
_CACHE: dict[tuple[Any, ...], Metric] = {}


class Metric(Protocol):
    name: str
    higher_is_better: bool
    # optional `needs_reference = True`: score() needs the uncompressed pipeline's images

    @property
    def version(self) -> str: ...

    def prompts(self, n: int | None = None) -> tuple[list[str], list[int]]: ...

    def score(
        self, images: list[Any], prompts: list[str], reference_images: list[Any] | None = None
    ) -> tuple[float, dict[str, float]]: ...


def metric_class(name: str) -> type:
    if name not in _CLASSES:
        raise CompressError(f"unknown metric {name!r}; choose one of {', '.join(_CLASSES)}")
    module, cls = _CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_metric(name: str, *, device: str = "cpu", **options: Any) -> Metric:
    """The metric `name` on `device`, built once per (name, device, options) and then reused.

    Options (None = the metric's environment variable or default): `weights` (a checkpoint file, a
    model folder or hub id) and `prompts` (a prompt file or folder); see each metric.
    """
    cls = metric_class(name)
    options = {k: v for k, v in options.items() if v is not None}
    accepted = [p for p in inspect.signature(cls).parameters if p != "device"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise CompressError(
            f"metric {name} takes no option {', '.join(unknown)}; it takes: "
            f"{', '.join(accepted) or 'none'}"
        )
    key = (name, device, tuple(sorted((k, str(v)) for k, v in options.items())))
    if key not in _CACHE:
        _CACHE[key] = cls(device=device, **options)
    return _CACHE[key]


def check_pairs(images: list[Any], prompts: list[str]) -> None:
    if len(images) != len(prompts):
        raise CompressError(f"got {len(images)} images for {len(prompts)} prompts")
    if not images:
        raise CompressError("no images to score")

"""Image generation with a pipeline's recorded call defaults (steps, guidance) and fixed seeds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# diffusers keeps steps and guidance as call arguments, not config; transforms record them here.
_ATTR = "_compress_call_defaults"


def set_call_defaults(pipe: DiffusionPipeline, **kwargs: Any) -> None:
    object.__setattr__(pipe, _ATTR, {**call_defaults(pipe), **kwargs})


def call_defaults(pipe: DiffusionPipeline) -> dict[str, Any]:
    return dict(getattr(pipe, _ATTR, {}))


def generate(
    pipe: DiffusionPipeline,
    prompts: list[str],
    seeds: list[int] | int = 0,
    *,
    output_type: str = "pil",
    **overrides: Any,
) -> Any:
    """Images for `prompts`, one CPU generator per image so results do not depend on batching."""
    import torch

    if isinstance(seeds, int):
        seeds = [seeds + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    kwargs = {**call_defaults(pipe), **overrides}
    with torch.inference_mode():
        return pipe(prompt=prompts, generator=gens, output_type=output_type, **kwargs).images

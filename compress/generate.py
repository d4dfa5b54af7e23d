"""Image generation with a pipeline's recorded call defaults (steps, guidance) and fixed seeds.

diffusers keeps steps and guidance as call arguments, not config, so transforms record them here
(`set_call_defaults`). A pipeline given defaults also honours them in its own `pipe(prompt)`
call: its class is swapped for a same-named subclass whose `__call__` fills in the recorded
arguments the caller left out (arguments the caller passes still win). diffusers offers no hook
for call defaults, hence this small subclass.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

_ATTR = "_compress_call_defaults"
_MARK = "_compress_honours_call_defaults"
_SUBCLASSES: dict[type, type] = {}


def set_call_defaults(pipe: DiffusionPipeline, **kwargs: Any) -> None:
    object.__setattr__(pipe, _ATTR, {**call_defaults(pipe), **kwargs})
    cls = type(pipe)
    if not getattr(cls, _MARK, False):
        pipe.__class__ = _honouring(cls)


def call_defaults(pipe: DiffusionPipeline) -> dict[str, Any]:
    return dict(getattr(pipe, _ATTR, {}))


def _honouring(cls: type) -> type:
    """`cls` with a `__call__` that applies the instance's recorded call defaults.

    The subclass keeps the class's name and module, so `save_pretrained` writes the same
    `_class_name` and plain diffusers loads the folder as before.
    """
    if cls in _SUBCLASSES:
        return _SUBCLASSES[cls]
    call = cls.__call__
    names = list(inspect.signature(call).parameters)[1:]  # without self

    @functools.wraps(call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        given = set(names[: len(args)]) | set(kwargs)
        for key, value in call_defaults(self).items():
            if key not in given:
                kwargs[key] = value
        return call(self, *args, **kwargs)

    sub = type(cls.__name__, (cls,), {"__call__": __call__, _MARK: True})
    sub.__module__, sub.__qualname__ = cls.__module__, cls.__qualname__
    _SUBCLASSES[cls] = sub
    return sub


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

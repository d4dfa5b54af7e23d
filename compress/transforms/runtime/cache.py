"""Feature caching across sampler steps (training-free, stage runtime): DeepCache for UNets
(Ma et al. 2024: the deep branch recomputed every `interval` steps, its features reused in
between) and diffusers' cache hooks for transformer denoisers (first-block cache, FasterCache,
pyramid attention broadcast, TaylorSeer), configured through diffusers' own config classes.

Nothing is saved: the folder stays a plain diffusers folder and `compress.load` re-installs the
cache. The recipe records, for the pipeline's default step count, which steps run the whole
denoiser; `cache_stats(pipe)` counts them for the last pipeline call.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from compress.context import RunContext
from compress.errors import CompressError
from compress.generate import call_defaults
from compress.models.denoiser import denoiser, denoiser_attr, require_unet
from compress.transforms.base import (
    Metadata,
    Stage,
    TransformConfig,
    check_replay,
    register_transform,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

Method = Literal[
    "deepcache", "first_block", "faster_cache", "pyramid_attention_broadcast", "taylorseer"
]
HOOK_METHODS = ("first_block", "faster_cache", "pyramid_attention_broadcast", "taylorseer")
# which of the shared knobs each method takes (others are an error, not silently ignored)
_TAKES = {
    "deepcache": {"interval", "branch", "schedule"},
    "first_block": {"threshold", "options"},
    "faster_cache": {"interval", "options"},
    "pyramid_attention_broadcast": {"interval", "options"},
    "taylorseer": {"interval", "options"},
}
# Transformer denoisers each hook was checked on (tests/transforms/test_cache.py samples them).
# diffusers' first-block cache fails on SD3's last block (it returns no text stream).
HOOKS_FOR = {
    "PixArtTransformer2DModel": HOOK_METHODS,
    "SD3Transformer2DModel": ("faster_cache", "pyramid_attention_broadcast", "taylorseer"),
}
DEEPCACHE_INTERVAL = 3
Option = bool | int | float | str | list[int | float | str]


class CacheConfig(TransformConfig):
    """Which caching method, and its knobs.

    deepcache (UNets): `interval` N (the whole UNet every N steps, default 3), `branch` (how many
    down layers the always-computed shallow path keeps; 0, the default, is the shallowest) and
    `schedule` (`uniform`, or `nonuniform`: as many full steps, denser early in the run).
    Hook methods (transformers): `interval` sets the method's skip range, `threshold` the
    first-block cache's; `options` sets any other field of the diffusers config class.
    """

    kind: Literal["cache"] = "cache"
    method: Method = "deepcache"
    interval: int | None = Field(None, ge=1, le=1000)
    branch: int | None = Field(None, ge=0, le=100)
    schedule: Literal["uniform", "nonuniform"] | None = None
    threshold: float | None = Field(None, gt=0.0, le=100.0)
    options: dict[str, Option] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _knobs(self) -> CacheConfig:
        knobs = ("interval", "branch", "schedule", "threshold")
        given = {k for k in knobs if getattr(self, k) is not None}
        given |= {"options"} if self.options else set()
        extra = sorted(given - _TAKES[self.method])
        if extra:
            raise ValueError(
                f"method {self.method} does not take {', '.join(extra)}; it takes "
                f"{', '.join(sorted(_TAKES[self.method]))}"
            )
        return self


def default_steps(pipe: DiffusionPipeline) -> int:
    """The step count a plain call of `pipe` uses: the recorded default, else diffusers'."""
    steps = call_defaults(pipe).get("num_inference_steps")
    if steps is None:
        steps = inspect.signature(type(pipe).__call__).parameters["num_inference_steps"].default
    return int(steps)


def _install(pipe: DiffusionPipeline, cfg: CacheConfig) -> Metadata:
    from compress.transforms.runtime import _cache_hooks as rt
    from compress.transforms.runtime import _deepcache as dc

    net = denoiser(pipe)
    rt.uninstall(net)  # applying again replaces the cache
    steps = default_steps(pipe)
    hook = rt.StepCache(pipe)
    meta: Metadata = {"method": cfg.method, "denoiser": type(net).__name__, "steps": steps}
    if cfg.method == "deepcache":
        others = ", ".join(HOOK_METHODS)
        require_unet(pipe, "cache method deepcache", f"method {others}")
        interval, branch = cfg.interval or DEEPCACHE_INTERVAL, cfg.branch or 0
        schedule = cfg.schedule or "uniform"
        hook.strategy = rt.DeepCache(net, interval, branch, schedule)
        full = dc.full_steps(steps, interval, schedule)
        meta |= {
            "interval": interval,
            "branch": branch,
            "schedule": schedule,
            "skip_connections": dc.skip_count(net),
            "full_steps": full,
            "full_calls": len(full),
        }
    else:
        name = type(net).__name__
        if denoiser_attr(pipe) != "transformer":
            raise CompressError(
                f"cache method {cfg.method} is one of diffusers' hooks for transformer denoisers "
                f"(pipe.transformer), not {name}; for a UNet use method deepcache"
            )
        if cfg.method not in HOOKS_FOR.get(name, ()):
            fits = "; ".join(f"{k}: {', '.join(v)}" for k, v in HOOKS_FOR.items())
            raise CompressError(f"cache method {cfg.method} is not available for {name} ({fits})")
        config = rt.build_hook_config(
            cfg.method, name, cfg.interval, cfg.threshold, cfg.options, hook
        )
        try:
            hook.strategy = rt.DiffusersCache(net, cfg.method, config)
        except (ValueError, AttributeError, KeyError) as exc:
            raise CompressError(
                f"cache method {cfg.method} does not apply to {name}: {exc}"
            ) from None
        # data-dependent (first_block) or module-level (attention) skipping: counted per call
        meta |= {"config": rt.plain(config), "full_steps": None, "full_calls": None}
    rt.install(hook, net)
    return meta


def cache_stats(pipe: DiffusionPipeline) -> dict[str, int] | None:
    """For the last pipeline call: its steps, denoiser calls and calls that ran the whole
    denoiser (None without a cache)."""
    from compress.transforms.runtime import _cache_hooks as rt

    hook = rt.installed(denoiser(pipe))
    return dict(hook.stats) if hook is not None else None


def remove_cache(pipe: DiffusionPipeline) -> None:
    """Uninstall the cache: the denoiser runs in full again."""
    from compress.transforms.runtime import _cache_hooks as rt

    rt.uninstall(denoiser(pipe))


def _restore(pipe: DiffusionPipeline, cfg: CacheConfig, metadata: Metadata) -> None:
    got = _install(pipe, cfg)
    check_replay("cache", metadata, got, only_recorded=True)


@register_transform(
    CacheConfig,
    stage=Stage.runtime,
    native=True,
    replay_on_load=True,
    restore=_restore,
    order=1,
    plain="the pipeline runs without it, the whole denoiser at every step (only compress.load "
    "installs the cache)",
)
def apply_cache(pipe: DiffusionPipeline, cfg: CacheConfig, ctx: RunContext) -> Metadata:
    """Install the cache on the denoiser and record which default-call steps run it in full."""
    return _install(pipe, cfg)

"""The runtime side of the `cache` transform: one diffusers ModelHook on the denoiser that knows
which sampler step is running, resets the cache at the start of every pipeline call and counts
the calls that ran the whole network; the caching itself is DeepCache (UNets) or one of
diffusers' cache hooks (transformer denoisers), configured as diffusers defines them.

Pipelines call the denoiser once per step (classifier-free guidance batched), so the step is the
position of the call's timestep in the scheduler's timesteps: a new pipeline call starts when the
position is 0 or goes backwards, whatever the step count or scheduler of that call.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from compress.errors import CompressError
from compress.transforms.runtime import _deepcache as dc

HOOK = "compress_cache"
# method -> (diffusers config class, apply function); each is in diffusers.hooks
DIFFUSERS_HOOKS = {
    "first_block": ("FirstBlockCacheConfig", "apply_first_block_cache"),
    "faster_cache": ("FasterCacheConfig", "apply_faster_cache"),
    "pyramid_attention_broadcast": (
        "PyramidAttentionBroadcastConfig",
        "apply_pyramid_attention_broadcast",
    ),
    "taylorseer": ("TaylorSeerCacheConfig", "apply_taylorseer_cache"),
}
# Per denoiser class, the config values the hook needs there (a user's options override them):
# image latents are BCHW (FasterCache assumes video, BCFHW); SD3 batches its pooled text embedding
# with the guidance halves, so FasterCache must split it too; PixArt names its attentions attn1
# and attn2, which TaylorSeer's default patterns (names ending in "attn") miss.
_ATTN = r"transformer_blocks\.\d+\.attn\d?"
CLASS_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("faster_cache", "PixArtTransformer2DModel"): {"tensor_format": "BCHW"},
    ("faster_cache", "SD3Transformer2DModel"): {
        "tensor_format": "BCHW",
        "_unconditional_conditional_input_kwargs_identifiers": (
            "hidden_states",
            "encoder_hidden_states",
            "timestep",
            "pooled_projections",
        ),
    },
    ("taylorseer", "PixArtTransformer2DModel"): {"cache_identifiers": (_ATTN,)},
}
# the knob `interval` sets this field of each hook's config
INTERVAL_FIELD = {
    "faster_cache": "spatial_attention_block_skip_range",
    "pyramid_attention_broadcast": "spatial_attention_block_skip_range",
    "taylorseer": "cache_interval",
}


class StepCache(ModelHook):
    """Outermost hook on the denoiser: step tracking, per-call reset, full-call counting."""

    def __init__(self, pipe: Any) -> None:
        super().__init__()
        self.pipe = pipe
        self.strategy: DeepCache | DiffusersCache | None = None  # set before registering
        self.stats = {"denoiser_calls": 0, "full_calls": 0, "steps": 0}
        self.timestep: float | None = None  # of the running call, for diffusers' callbacks
        self._seen: Any = None
        self._positions: dict[float, int] = {}
        self._last: int | None = None

    def _position(self, t: Any) -> int | None:
        ts = getattr(self.pipe.scheduler, "timesteps", None)
        if ts is None:
            return None
        if ts is not self._seen:  # set_timesteps ran: a new schedule (Heun repeats timesteps)
            self._seen = ts
            values = [float(v) for v in torch.as_tensor(ts).flatten().tolist()]
            self._positions = {}
            for v in values:
                self._positions.setdefault(v, len(self._positions))
        return self._positions.get(float(t))

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        t = torch.as_tensor(t).flatten()[0].item() if t is not None else None
        step = self._position(t) if t is not None else None
        if step is None:  # outside a sampling loop (a direct call): the whole network, no cache
            self.strategy.reset(module)
            out = self.strategy.forward(self.fn_ref.original_forward, module, None, 0, args, kwargs)
            self.strategy.reset(module)
            return out[0]
        if step == 0 or self._last is None or step < self._last:
            self.strategy.reset(module)
            self.stats = {"denoiser_calls": 0, "full_calls": 0, "steps": len(self._positions)}
        self._last, self.timestep = step, t
        out, full = self.strategy.forward(
            self.fn_ref.original_forward, module, step, len(self._positions), args, kwargs
        )
        self.stats["denoiser_calls"] += 1
        self.stats["full_calls"] += int(full)
        return out


class DeepCache:
    """UNet2DConditionModel: the whole UNet on the schedule's steps, the shallow branch between."""

    def __init__(self, unet: nn.Module, interval: int, branch: int, schedule: str) -> None:
        dc.check_branch(unet, branch)
        self.interval, self.branch, self.schedule = interval, branch, schedule
        self.feature: torch.Tensor | None = None
        self._capture = False
        self._schedules: dict[int, set[int]] = {}
        self._handle = dc.feature_module(unet, branch).register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._capture:
            self.feature = output[0] if isinstance(output, tuple) else output

    def full_steps(self, steps: int) -> set[int]:
        if steps not in self._schedules:
            self._schedules[steps] = set(dc.full_steps(steps, self.interval, self.schedule))
        return self._schedules[steps]

    def reset(self, module: nn.Module) -> None:
        self.feature = None

    def forward(
        self, original: Any, unet: nn.Module, step: int | None, steps: int, args: tuple, kw: dict
    ) -> tuple[Any, bool]:
        sample = kw.get("sample", args[0] if args else None)
        reuse = (
            step is not None
            and step not in self.full_steps(steps)
            and self.feature is not None
            and self.feature.shape[0] == sample.shape[0]
            and not dc.needs_full(unet, args, kw)
        )
        if reuse:
            return dc.shallow_forward(unet, self.branch, self.feature, args, kw), False
        self._capture = step is not None
        try:
            return original(*args, **kw), True
        finally:
            self._capture = False

    def remove(self, module: nn.Module) -> None:
        self._handle.remove()


def build_hook_config(
    method: str,
    net_class: str,
    interval: int | None,
    threshold: float | None,
    options: dict[str, Any],
    hook: Any,
) -> Any:
    """The diffusers config of `method`: our knobs and `options` set its fields; its timestep
    callback reads the running call's timestep from the step hook."""
    import diffusers.hooks as dh

    cls = getattr(dh, DIFFUSERS_HOOKS[method][0])
    fields = {f.name: f for f in dataclasses.fields(cls)}
    settable = {
        n for n, f in fields.items() if not n.startswith("_") and "Callable" not in str(f.type)
    }
    unknown = sorted(set(options) - settable)
    if unknown:
        raise CompressError(
            f"cache method {method}: options {unknown} are not fields of diffusers' "
            f"{cls.__name__}; settable fields: {', '.join(sorted(settable))}"
        )
    if (
        method == "taylorseer"
        and net_class == "SD3Transformer2DModel"
        and options.get("use_lite_mode")
    ):
        raise CompressError(
            "cache method taylorseer: lite mode skips whole blocks, and SD3's last block returns "
            "no text stream for it to predict; leave use_lite_mode off on SD3Transformer2DModel"
        )
    values = dict(CLASS_DEFAULTS.get((method, net_class), {}))
    values |= {k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items()}
    for k, v in values.items():
        if k.endswith("dtype") and isinstance(v, str):
            values[k] = getattr(torch, v)
    if interval is not None:
        values[INTERVAL_FIELD[method]] = interval
    if threshold is not None:
        values["threshold"] = threshold
    if "current_timestep_callback" in fields:
        values["current_timestep_callback"] = lambda: hook.timestep
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise CompressError(
            f"cache method {method}: {cls.__name__} refused {options}: {exc}"
        ) from None


def plain(config: Any) -> dict[str, Any]:
    """A diffusers hook config as recipe data (callbacks left out)."""
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if callable(v) or f.name.startswith("_"):
            continue
        out[f.name] = (
            list(v) if isinstance(v, tuple) else (str(v) if isinstance(v, torch.dtype) else v)
        )
    return out


class DiffusersCache:
    """A transformer denoiser with one of diffusers' cache hooks. Calls run inside diffusers'
    cache context (which the PixArt and SD3 pipelines do not enter themselves); a call counts as
    full when the last transformer block ran its own layers."""

    def __init__(self, net: nn.Module, method: str, config: Any) -> None:
        import diffusers.hooks as dh
        from diffusers.models.cache_utils import CacheMixin

        self.method, self.config = method, config
        if isinstance(net, CacheMixin):
            net.enable_cache(config)
        else:  # no CacheMixin on this class: the same hooks, applied directly
            getattr(dh, DIFFUSERS_HOOKS[method][1])(net, config)
            HookRegistry.check_if_exists_or_initialize(net).invalidate_child_registries_cache()
            net._cache_config = config  # lets CacheMixin.disable_cache remove them
        if not any(_hooks(m) for n, m in net.named_modules() if n):
            self.remove(net)
            raise CompressError(
                f"cache method {method} matched no module of {type(net).__name__}; name the "
                "modules in options (e.g. cache_identifiers or *_block_identifiers: regexes)"
            )
        self.ran = False
        leaf = _last_leaf(net)
        self._handle = leaf.register_forward_hook(lambda *_: setattr(self, "ran", True))

    def reset(self, module: nn.Module) -> None:
        HookRegistry.check_if_exists_or_initialize(module).reset_stateful_hooks(recurse=True)

    def forward(
        self, original: Any, net: nn.Module, step: int | None, steps: int, args: tuple, kw: dict
    ) -> tuple[Any, bool]:
        from diffusers.models.cache_utils import CacheMixin

        self.ran = False
        extra = {} if step is None else {"step_index": step, "num_inference_steps": steps}
        with CacheMixin.cache_context(net, "cond", **extra):
            out = original(*args, **kw)
        return out, self.ran

    def remove(self, module: nn.Module) -> None:
        from diffusers.models.cache_utils import CacheMixin

        if getattr(self, "_handle", None) is not None:
            self._handle.remove()
        CacheMixin.disable_cache(module)


def _hooks(module: nn.Module) -> dict[str, Any]:
    registry = getattr(module, "_diffusers_hook", None)
    return registry.hooks if registry is not None else {}


def _last_leaf(net: nn.Module) -> nn.Module:
    """The last parameterised leaf of the denoiser's last transformer block."""
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS

    blocks = [
        m[-1]
        for name, m in net.named_children()
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(m, nn.ModuleList) and len(m)
    ]
    if not blocks:
        raise CompressError(f"{type(net).__name__} has no transformer blocks for a cache hook")
    leaves = [m for m in blocks[-1].modules() if not list(m.children()) and list(m.parameters())]
    return leaves[-1]


def install(hook: StepCache, net: nn.Module) -> None:
    """Register the step hook (its strategy set) outermost on `net`, after the method's hooks."""
    HookRegistry.check_if_exists_or_initialize(net).register_hook(hook, HOOK)


def installed(net: nn.Module) -> StepCache | None:
    registry = getattr(net, "_diffusers_hook", None)
    return registry.get_hook(HOOK) if registry is not None else None


def uninstall(net: nn.Module) -> None:
    hook = installed(net)
    if hook is not None:
        HookRegistry.check_if_exists_or_initialize(net).remove_hook(HOOK, recurse=False)
        hook.strategy.remove(net)

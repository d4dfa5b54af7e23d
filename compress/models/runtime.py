"""The one place that prepares a pipeline for fast inference: channels-last memory format, fused
QKV projections, the SDPA kernel, and `torch.compile` of the denoiser and the VAE decoder.

Nothing here changes a weight's value: fused projections are copies and channels-last is a
layout, and a state-dict hook hides both, so a prepared pipeline still saves the weights it was
given. Compilation itself happens lazily, at the first call (torch.compile's own behaviour).
COMPRESS_COMPILE_BACKEND overrides the compiler backend (default inductor), e.g. `eager` in tests
that check the wiring rather than inductor's kernels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.models.denoiser import denoiser, set_denoiser

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from torch import nn

MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs")
# our names -> torch.nn.attention.SDPBackend members; "default" lets torch pick per call
ATTENTION = {
    "default": None,
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}
CUDA_ONLY_ATTENTION = ("efficient", "cudnn")


@dataclass(frozen=True)
class RuntimeOptions:
    """How to prepare a pipeline."""

    mode: str = "default"
    fullgraph: bool = True
    vae: bool = True  # also the VAE decoder (compiled, channels-last, fused)
    channels_last: bool = True
    fuse_qkv: bool = True
    attention: str = "default"


@dataclass
class Prepared:
    """What `prepare` did (`metadata`) and how to take it back (`undo`, last step first)."""

    metadata: dict[str, Any]
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


def compile_backend() -> str:
    return os.environ.get("COMPRESS_COMPILE_BACKEND", "inductor")


_MARK = "_compress_compiled_beneath_hooks"


def is_compiled(pipe: DiffusionPipeline) -> bool:
    """True when the pipeline's denoiser is already compiled (whole, or beneath its hooks)."""
    from diffusers.utils.torch_utils import is_compiled_module

    net = denoiser(pipe)
    return is_compiled_module(net) or getattr(net, _MARK, False)


_KEPT = "_compress_prepared"  # on a pipeline a compile transform prepared: (Prepared, options)


def prepare_kept(pipe: DiffusionPipeline, opts: RuntimeOptions) -> dict[str, Any]:
    """`prepare`, remembered on the pipeline so that work needing its plain modules (loading a
    LoRA) can take it off and put it back (`unprepared`); what it did."""
    done = prepare(pipe, opts)
    setattr(pipe, _KEPT, (done, opts))
    return done.metadata


@contextlib.contextmanager
def unprepared(pipe: DiffusionPipeline, what: str, **changes: Any) -> Iterator[None]:
    """The pipeline without what a compile transform did (uncompiled, unfused, contiguous) for the
    body (`what` it does), prepared again after it with `changes` to the options (as before if
    the body fails); it compiles again at its next call."""
    kept = getattr(pipe, _KEPT, None)
    if kept is None:
        if is_compiled(pipe):
            raise CompressError(
                f"the denoiser was compiled outside a compile transform, which compress cannot "
                f"undo to {what}; {what} before compiling"
            )
        yield
        return
    done, opts = kept
    done.undo()
    delattr(pipe, _KEPT)
    try:
        yield
    except BaseException:
        prepare_kept(pipe, opts)
        raise
    prepare_kept(pipe, dataclasses.replace(opts, **changes))


def prepare(pipe: DiffusionPipeline, opts: RuntimeOptions) -> Prepared:
    """Apply `opts` to `pipe` in place; raise before any change on what cannot work."""
    import torch

    if opts.mode not in MODES:
        raise CompressError(f"compile mode {opts.mode!r} is not one of {', '.join(MODES)}")
    # Dynamo does not guard on module hooks by default: a graph traced before a hook was added
    # (the same architecture compiled earlier in this process, as a search worker does) would run
    # without it, and DeepCache's feature capture, a forward hook, would silently be skipped.
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    if opts.attention not in ATTENTION:
        raise CompressError(f"attention {opts.attention!r} is not one of {', '.join(ATTENTION)}")
    if is_compiled(pipe):
        raise CompressError(
            "the denoiser is already compiled; a recipe takes one compile transform, and an "
            "artifact that holds one is compiled when loaded"
        )
    device = pipe._execution_device
    if opts.attention in CUDA_ONLY_ATTENTION and device.type != "cuda":
        raise CompressError(
            f"attention {opts.attention!r} is a CUDA kernel but the pipeline is on {device}; "
            "on a CPU use default, flash or math"
        )
    net = denoiser(pipe)
    modules = {"denoiser": net, **({"vae": pipe.vae} if opts.vae else {})}
    done = Prepared({})
    for module in modules.values():
        _hide_runtime_state(module, done)
    if opts.fuse_qkv:
        done.metadata["fused_qkv"] = {n: _fuse(m, done) for n, m in modules.items()}
    if opts.channels_last:
        for module in modules.values():
            module.to(memory_format=torch.channels_last)
            done._undo.append(functools.partial(module.to, memory_format=torch.contiguous_format))
        done.metadata["channels_last"] = sorted(modules)
    done.metadata["attention"] = opts.attention
    if ATTENTION[opts.attention] is not None:
        backend = getattr(torch.nn.attention.SDPBackend, ATTENTION[opts.attention])
        _wrap(net, "forward", functools.partial(_with_sdpa, backend), done)
        if opts.vae:
            _wrap(pipe.vae, "decode", functools.partial(_with_sdpa, backend), done)
    kw = {"mode": None if opts.mode == "default" else opts.mode, "fullgraph": opts.fullgraph}
    options = {"backend": compile_backend(), "dynamic": False, **kw}
    regions = _compile_beneath_hooks(net, lambda fn: torch.compile(fn, **options), done)
    if regions:
        done.metadata["compiled_beneath_hooks"] = regions
    else:
        set_denoiser(pipe, torch.compile(net, **options))
        done._undo.append(functools.partial(set_denoiser, pipe, net))
    if opts.vae:
        _wrap(pipe.vae, "decode", lambda fn: torch.compile(fn, **options), done)
    compiled = ["denoiser"] + (["vae_decode"] if opts.vae else [])
    done.metadata |= {"compiled": compiled, "mode": opts.mode}
    done.metadata |= {"fullgraph": opts.fullgraph, "dynamic": False}
    return done


def _compile_beneath_hooks(
    net: nn.Module, compile_fn: Callable[[Any], Any], done: Prepared
) -> list[str]:
    """Where diffusers hooks sit on the denoiser (a feature cache: DeepCache's step hook on the
    UNet, diffusers' cache hooks on attention or blocks), compile each innermost hooked module's
    own forward and leave the hooks' per-step Python logic outside the graph: traced, that logic
    either breaks a full graph or recompiles at every step until torch's recompile limit, after
    which the denoiser silently runs uncompiled. Returns the compiled modules' names (none: no
    hooks, compile the whole denoiser).

    diffusers' HookRegistry chains a module's hooks through function references (`_fn_refs`, the
    first one holding the module's own forward); it offers no public way to wrap that forward.
    """
    hooked = {
        name: m
        for name, m in net.named_modules()
        if getattr(getattr(m, "_diffusers_hook", None), "_fn_refs", None)
    }
    inner = [n for n in hooked if not any(_encloses(n, other) for other in hooked)]
    for name in inner:
        ref = hooked[name]._diffusers_hook._fn_refs[0]
        attr = "original_forward" if hasattr(ref, "original_forward") else "forward"
        own = getattr(ref, attr)
        setattr(ref, attr, compile_fn(own))
        done._undo.append(functools.partial(setattr, ref, attr, own))
    if inner:
        setattr(net, _MARK, True)
        done._undo.append(functools.partial(delattr, net, _MARK))
    return [n or "denoiser" for n in sorted(inner)]


def _encloses(outer: str, name: str) -> bool:
    """True when module `name` lies inside module `outer` ("" is the root)."""
    return name != outer and (outer == "" or name.startswith(f"{outer}."))


def _with_sdpa(backend: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with torch's SDPA restricted to one kernel (every diffusers attention processor ends
    in F.scaled_dot_product_attention; diffusers' own backend switch reaches only the newer
    transformer processors, not the UNet's, so the kernel is chosen here for both)."""
    from torch.nn.attention import sdpa_kernel

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with sdpa_kernel(backend):
            return fn(*args, **kwargs)

    return call


def _wrap(obj: Any, name: str, make: Callable[[Any], Any], done: Prepared) -> None:
    """Replace the bound method `obj.name` by `make(method)` on the instance, undoably."""
    had = name in obj.__dict__
    previous = obj.__dict__.get(name)
    setattr(obj, name, make(getattr(obj, name)))

    def undo() -> None:
        if had:
            setattr(obj, name, previous)
        else:
            obj.__dict__.pop(name, None)

    done._undo.append(undo)


def _is_quantized(module: nn.Module) -> bool:
    import torch

    plain = (torch.Tensor, torch.nn.Parameter)
    return getattr(module, "hf_quantizer", None) is not None or any(
        type(p) not in plain for p in module.parameters()
    )


def _fuse(module: nn.Module, done: Prepared) -> int | str:
    """diffusers' fused QKV projections where the model offers them: the number of attention
    layers fused, or why none were."""
    if not hasattr(module, "fuse_qkv_projections"):
        return f"not offered by {type(module).__name__}"
    if _is_quantized(module):  # the fused copy would concatenate quantized tensors
        return "skipped: quantized weights"
    try:
        module.fuse_qkv_projections()
    except ValueError as exc:  # e.g. attention with added KV projections
        return f"not offered: {exc}"
    fused = [m for m in module.modules() if getattr(m, "fused_projections", False)]

    def undo() -> None:
        module.unfuse_qkv_projections()
        for m in fused:
            for name in ("to_qkv", "to_kv", "to_added_qkv"):
                m._modules.pop(name, None)
            m.fused_projections = False

    done._undo.append(undo)
    return len(fused)


def _hide_runtime_state(module: nn.Module, done: Prepared) -> None:
    """The state dict keeps only the keys the module had before, in contiguous layout, so
    saving a prepared pipeline writes exactly the weights it was given (loadable anywhere)."""
    import torch

    keys = frozenset(module.state_dict())

    def hook(mod: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
        for key in [k for k in state if k.startswith(prefix)]:
            value = state[key]
            if key[len(prefix) :] not in keys:
                del state[key]
            elif type(value) is torch.Tensor and not value.is_contiguous():
                state[key] = value.contiguous()

    handle = module.register_state_dict_post_hook(hook)
    done._undo.append(handle.remove)

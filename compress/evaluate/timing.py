"""Clocks (CUDA events or perf_counter) and per-component timers around a diffusers pipeline."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from compress.models.denoiser import denoiser

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

COMPONENTS = ("text_encoder", "denoiser", "vae_decode")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
_MISSING = object()


class Clock:
    """Timestamps on the device's own timeline: CUDA events on a GPU, perf_counter elsewhere.

    Events are recorded on the stream without blocking, so timing a component adds no
    synchronisation inside the run; `sync` is called once at each run's end before reading them.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def ms(self, start: Any, end: Any) -> float:
        return float(start.elapsed_time(end)) if self.cuda else (end - start) * 1e3


class ComponentTimer:
    """Times every call of the text encoder(s), the denoiser (all steps) and the VAE decode.

    Forward hooks sit on the object the pipeline calls (a `torch.compile` wrapper when compiled, so
    the hooks run outside the compiled graph); VAE decode is a method, so it is wrapped instead.
    """

    def __init__(self, pipe: DiffusionPipeline, clock: Clock) -> None:
        self.pipe, self.clock = pipe, clock
        self.spans: dict[str, list[tuple[Any, Any]]] = {c: [] for c in COMPONENTS}
        self._handles: list[Any] = []
        self._open: dict[str, Any] = {}
        self._vae_decode: Any = _MISSING

    def reset(self) -> None:
        self.spans = {c: [] for c in COMPONENTS}

    def totals_ms(self) -> dict[str, float]:
        """Summed time per component since `reset` (call after `clock.sync()`)."""
        return {c: sum(self.clock.ms(a, b) for a, b in s) for c, s in self.spans.items()}

    def calls(self) -> dict[str, int]:
        return {c: len(s) for c, s in self.spans.items()}

    def _hook(self, module: Any, component: str) -> None:
        key = f"{component}:{id(module)}"

        def pre(*_: Any) -> None:
            self._open[key] = self.clock.mark()

        def post(*_: Any) -> None:
            self.spans[component].append((self._open.pop(key), self.clock.mark()))

        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def __enter__(self) -> ComponentTimer:
        for name in TEXT_ENCODERS:
            if getattr(self.pipe, name, None) is not None:
                self._hook(getattr(self.pipe, name), "text_encoder")
        self._hook(denoiser(self.pipe), "denoiser")
        vae = self.pipe.vae
        self._vae_decode = vae.__dict__.get("decode", _MISSING)
        inner: Callable[..., Any] = vae.decode

        def decode(*args: Any, **kwargs: Any) -> Any:
            start = self.clock.mark()
            out = inner(*args, **kwargs)
            self.spans["vae_decode"].append((start, self.clock.mark()))
            return out

        vae.decode = decode
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        _restore_attr(self.pipe.vae, "decode", self._vae_decode)


def _restore_attr(obj: Any, name: str, previous: Any) -> None:
    if previous is _MISSING:
        obj.__dict__.pop(name, None)
    else:
        setattr(obj, name, previous)


@contextlib.contextmanager
def compiled(pipe: DiffusionPipeline, enabled: bool) -> Iterator[None]:
    """`torch.compile` the denoiser and VAE decode (as diffusers recommends) for the block's span;
    a pipeline compiled by a `compile` transform stays as it is.

    COMPRESS_COMPILE_BACKEND / COMPRESS_COMPILE_MODE choose the backend (default inductor) and mode.
    """
    from compress.models.runtime import RuntimeOptions, is_compiled, prepare

    if not enabled or is_compiled(pipe):
        yield
        return
    mode = os.environ.get("COMPRESS_COMPILE_MODE", "default")
    opts = RuntimeOptions(mode=mode, fullgraph=False, channels_last=False, fuse_qkv=False)
    done = prepare(pipe, opts)
    try:
        yield
    finally:
        done.undo()


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[int]:
    """Run with `threads` intra-op CPU threads (None: as set), yielding the count in effect."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)

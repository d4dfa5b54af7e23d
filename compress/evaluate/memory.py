"""Peak memory of sampling: what a pipeline needs on its device to generate one batch.

A search trial's worker also holds the uncompressed baseline (paired timing keeps it loaded), and
on CPU the process holds the interpreter and its libraries, so the process-wide peak says little
about one candidate. The peak here is the bytes of the pipeline's own tensors on the device plus
the high-water mark of what sampling adds above the memory in use when it starts:

- CUDA: the caching allocator's peak (`torch.cuda.reset_peak_memory_stats`, then
  `max_memory_allocated`) minus what was allocated at the start;
- CPU on Linux: the resident-set high-water mark (VmHWM of /proc/self/status, reset to the current
  resident set by writing 5 to /proc/self/clear_refs) minus the resident set at the start; where
  the kernel refuses that reset, psutil samples the resident set every 2 ms instead (a peak
  shorter than that is missed);
- other devices (mps, xpu): not measured (`mb` is None; `method` says so).

Values are MiB (2**20 bytes), as every `peak_memory_mb` of the project.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 2**20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_SAMPLE_S = 0.002  # psutil fallback: seconds between resident-set samples


@dataclass
class MemoryPeak:
    """One measurement: the pipeline's tensors, and the high-water mark sampling added above
    the memory in use when it started (None where the device offers no way to measure it)."""

    weights_mb: float
    method: str  # how sampling_mb was measured, or why it was not
    sampling_mb: float | None = None

    @property
    def mb(self) -> float | None:
        """The peak: weights plus sampling's high-water mark; None when not measured."""
        return None if self.sampling_mb is None else self.weights_mb + self.sampling_mb

    def describe(self) -> str:
        if self.mb is None:
            return f"peak memory not measured ({self.method})"
        return (
            f"peak memory {self.mb:.1f} MiB (tensors {self.weights_mb:.1f} + sampling "
            f"{self.sampling_mb:.1f}; {self.method})"
        )


def tensor_bytes(pipe: Any, device: Any) -> int:
    """Bytes of the storages of every parameter and buffer of the pipeline's modules that live
    on `device`, each storage counted once (shared and tied weights, views). Quantized tensor
    subclasses (torchao) are counted by the plain tensors they hold (`__tensor_flatten__`)."""
    import torch

    device = _canonical(torch.device(device))
    storages: dict[int, int] = {}
    for module in _modules(pipe):
        for t in [*module.parameters(), *module.buffers()]:
            _collect(t, device, storages)
    return sum(storages.values())


def _modules(pipe: Any) -> list[Any]:
    import torch

    if isinstance(pipe, torch.nn.Module):
        return [pipe]
    parts = getattr(pipe, "components", {}) or {}
    return [m for m in parts.values() if isinstance(m, torch.nn.Module)]


def _collect(t: Any, device: Any, out: dict[int, int]) -> None:
    import torch

    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        for name in names:
            _collect(getattr(t, name), device, out)
        return
    if _canonical(t.device) != device:
        return
    storage = t.untyped_storage()
    out[storage.data_ptr()] = storage.nbytes()


def _canonical(device: Any) -> Any:
    import torch

    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@contextlib.contextmanager
def sampling_peak(pipe: Any, device: str | Any) -> Iterator[MemoryPeak]:
    """Measure the block (the pipeline's sampling): the yielded MemoryPeak is filled on exit."""
    import torch

    dev = _canonical(torch.device(device))
    probe = _probe(dev)
    peak = MemoryPeak(weights_mb=tensor_bytes(pipe, dev) / MIB, method=probe.method)
    probe.start()
    try:
        yield peak
    finally:
        above = probe.stop()
        peak.sampling_mb = None if above is None else max(above, 0) / MIB


class _Probe:
    """The high-water mark of a block above its start, in bytes (None: not measured)."""

    method = "not measured"

    def start(self) -> None:
        pass

    def stop(self) -> int | None:
        return None


class _Cuda(_Probe):
    method = "CUDA allocator peak"

    def __init__(self, device: Any) -> None:
        self.device, self.base = device, 0

    def start(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        self.base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def stop(self) -> int:
        import torch

        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self.base


class _HighWater(_Probe):
    method = "resident-set high-water mark (VmHWM)"

    def __init__(self) -> None:
        self.base = 0

    def start(self) -> None:
        _release_free_heap()
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set
        self.base = _status_kib("VmRSS") * 1024

    def stop(self) -> int:
        return _status_kib("VmHWM") * 1024 - self.base


class _Sampled(_Probe):
    method = "resident set sampled every 2 ms (psutil)"

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.base = self.high = 0
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        _release_free_heap()
        self.base = self.high = self.process.memory_info().rss
        self.done.clear()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(_SAMPLE_S):
            self.high = max(self.high, self.process.memory_info().rss)

    def stop(self) -> int:
        self.done.set()
        if self.thread is not None:
            self.thread.join()
        self.high = max(self.high, self.process.memory_info().rss)
        return self.high - self.base


def _probe(device: Any) -> _Probe:
    if device.type == "cuda":
        return _Cuda(device)
    if device.type != "cpu":
        probe = _Probe()
        probe.method = f"no peak-memory counter for device {device.type}"
        return probe
    return _HighWater() if high_water_resettable() else _Sampled()


def high_water_resettable() -> bool:
    """True where this process may reset its resident-set high-water mark (Linux, not refused)."""
    try:
        _status_kib("VmHWM")
        _CLEAR_REFS.write_text("5")
    except (OSError, ValueError):
        return False
    return True


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])  # "VmHWM:   123456 kB"
    raise ValueError(f"{_STATUS} has no {field}")


def _release_free_heap() -> None:
    """Return memory freed earlier to the OS, so that the resident set at the start holds what
    is in use, not what the C heap kept: otherwise sampling reuses those pages unseen. glibc's
    malloc_trim does it; no library exposes it, hence ctypes (a no-op on other C libraries)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

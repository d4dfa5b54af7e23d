"""Paired timing: a candidate timed in alternation with its references in one process.

Latencies measured minutes apart, or while other work shares the cores, are not comparable on a
busy machine; ratios of runs taken side by side are. After warm-up, each round times every
pipeline once, the order reversed on every other round (A B, B A, ...) so that neither side
always runs in the other's wake. Per reference, the speed-up is the median of the per-round
ratios (reference ms / candidate ms), with a distribution-free 95% interval over rounds.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from compress.errors import CompressError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from compress.evaluate.settings import EvalSettings

CANDIDATE = "candidate"


class Ratio(BaseModel):
    """Median per-round ratio and its 95% interval (`low`, `high`)."""

    median: float
    low: float
    high: float

    @property
    def ci(self) -> list[float]:
        return [self.low, self.high]

    @property
    def above_one(self) -> bool:
        """True when the whole interval lies above 1 (the candidate is really faster)."""
        return self.low > 1.0


class PairedTiming(BaseModel):
    """Every round of one paired measurement, and the ratios derived from them."""

    rounds: int
    warmup: int
    runs_ms: dict[str, list[float]]  # pipeline name -> end-to-end ms, one per round
    components_ms: dict[str, dict[str, list[float]]]  # name -> component -> ms per round
    calls_per_run: dict[str, dict[str, int]]  # name -> component -> calls in one run
    speedup: dict[str, Ratio]  # reference name -> reference ms / candidate ms
    component_ratio: dict[str, dict[str, Ratio]] = Field(default_factory=dict)  # cand / ref
    settings: dict[str, dict[str, Any]]  # name -> settings as run
    threads: int
    warmup_ms: dict[str, list[float]] = Field(default_factory=dict)  # the first compiles
    # CUDA: per name, the largest allocator peak of a timed run above what was allocated when it
    # started (its activations and workspaces; weights are not counted); empty elsewhere
    run_peak_mb: dict[str, float] = Field(default_factory=dict)

    def median_ms(self, name: str = CANDIDATE) -> float:
        return statistics.median(self.runs_ms[name])

    def spread_ms(self, name: str = CANDIDATE) -> float:
        from compress.evaluate.latency import iqr

        return iqr(self.runs_ms[name])


def median_interval(values: list[float], level: float = 0.95) -> Ratio:
    """Median of `values` with its distribution-free interval: the order statistics x(k) and
    x(n+1-k) that bracket the true median with probability >= `level` whatever the noise's shape
    (how many rounds fall below the median is binomial with p = 1/2).

    Not a percentile bootstrap: on the 10 rounds a trial times, a bootstrap of the median covers
    about 94% for independent noise and less for the drifting noise of shared cores (five trials
    of the unchanged model gave two intervals that excluded 1, reports/search.md). With fewer
    than 6 rounds no pair of order statistics reaches 95%: the interval is then [min, max].
    """
    from math import comb

    x = sorted(values)
    n = len(x)
    if n == 0:
        raise CompressError("no rounds to summarise")
    k, tail = 0, 0.0  # k: rounds left out on each side
    while k < n // 2 and tail + comb(n, k) / 2**n <= (1 - level) / 2:
        tail += comb(n, k) / 2**n
        k += 1
    low, high = x[max(k - 1, 0)], x[n - max(k, 1)]
    return Ratio(median=statistics.median(x), low=low, high=high)


def paired_latency(
    candidate: DiffusionPipeline,
    references: dict[str, tuple[DiffusionPipeline, EvalSettings]],
    settings: EvalSettings,
    *,
    rounds: int,
    prompts: list[str] | None = None,
) -> PairedTiming:
    """Time `candidate` (with `settings`) against each reference (with its own settings, e.g.
    the baseline's usual steps and guidance) in `rounds` alternating rounds after
    `settings.warmup` warm-up runs of each."""
    from compress.evaluate.latency import Runner

    if rounds < 2:
        raise CompressError(f"paired timing needs at least 2 rounds, got {rounds}")
    if CANDIDATE in references:
        raise CompressError(f"a reference may not be named {CANDIDATE!r}")
    pipes = {**{k: v for k, v in references.items()}, CANDIDATE: (candidate, settings)}
    names = list(pipes)
    runs: dict[str, list[float]] = {n: [] for n in names}
    warm: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float] = {}
    parts: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    with contextlib.ExitStack() as stack:
        runners = {n: stack.enter_context(Runner(p, s, prompts)) for n, (p, s) in pipes.items()}
        for _ in range(settings.warmup):
            for n in names:
                warm[n].append(runners[n].run()[0])
        for i in range(rounds):
            for n in names if i % 2 == 0 else reversed(names):
                with _run_peak(runners[n].device) as peak:
                    total, comps = runners[n].run()
                if peak:
                    peaks[n] = max(peaks.get(n, 0.0), peak[0])
                runs[n].append(total)
                for k, v in comps.items():
                    parts[n].setdefault(k, []).append(v)
        calls = {n: r.timer.calls() for n, r in runners.items()}
        resolved = {n: r.resolved() for n, r in runners.items()}
        threads = runners[CANDIDATE].threads
    cand = runs[CANDIDATE]
    speedup = {
        ref: median_interval([a / b for a, b in zip(runs[ref], cand, strict=True)])
        for ref in references
    }
    comp_ratio: dict[str, dict[str, Ratio]] = {}
    for ref in references:
        comp_ratio[ref] = {}
        for comp, values in parts[CANDIDATE].items():
            base = parts[ref].get(comp, [])
            if len(base) == len(values) and all(v > 0 for v in base):
                comp_ratio[ref][comp] = median_interval(
                    [c / b for c, b in zip(values, base, strict=True)]
                )
    return PairedTiming(
        rounds=rounds,
        warmup=settings.warmup,
        runs_ms=runs,
        components_ms=parts,
        calls_per_run=calls,
        speedup=speedup,
        component_ratio=comp_ratio,
        settings=resolved,
        threads=threads,
        warmup_ms=warm,
        run_peak_mb=peaks,
    )


@contextlib.contextmanager
def _run_peak(device: Any) -> Iterator[list[float]]:
    """On CUDA, yields a list that receives the block's allocator peak above its start, in MiB."""
    import torch

    out: list[float] = []
    if device.type != "cuda":
        yield out
        return
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield out
    torch.cuda.synchronize(device)
    out.append((torch.cuda.max_memory_allocated(device) - start) / 2**20)

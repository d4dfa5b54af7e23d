"""Keeping a trial's timing away from other trials' work on the same node.

Ray counts CPUs but does not assign particular cores, so a trial reserves its own: one lock file
per core in a node-local folder, held while the trial runs, and the process pinned to those cores
(`os.sched_setaffinity`) with torch's intra-op threads set to their number. Where the trials of a
node cannot each have cores of their own (more CPUs asked for than the node has, or GPUs shared
between trials), timing phases take a node-wide lock exclusively while training and generation
take it shared, so no timing overlaps other work.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOCK_DIR = Path(tempfile.gettempdir()) / "compress-node"
_ALL_CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


@dataclass
class Placement:
    """The cores a trial holds (empty: none of its own) and whether phases must take turns."""

    cores: list[int]
    shared: bool  # True: timing waits for the node's other work (node-wide lock)
    _files: list[IO[str]] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        cores = ",".join(map(str, self.cores)) or "none of its own"
        turns = "; timing takes the node lock" if self.shared else ""
        return f"cores {cores}{turns}"


def _try_lock(path: Path) -> IO[str] | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def reserve_cores(n: int, wait_s: float = 10.0) -> Placement:
    """Hold `n` free cores of this node (lock files), waiting up to `wait_s` for them."""
    deadline = time.monotonic() + wait_s
    while True:
        held: list[tuple[int, IO[str]]] = []
        for core in _ALL_CORES:
            f = _try_lock(LOCK_DIR / f"core-{core}.lock")
            if f is not None:
                held.append((core, f))
            if len(held) == n:
                return Placement([c for c, _ in held], False, [f for _, f in held])
        for _, f in held:
            f.close()
        if time.monotonic() >= deadline:
            return Placement([], True)
        time.sleep(0.2)


@contextlib.contextmanager
def pinned(cpus: float, *, shared: bool = False) -> Iterator[Placement]:
    """Reserve and pin `cpus` cores for the block (torch threads follow); restore afterwards.

    `shared` forces turn-taking (e.g. GPUs shared between trials). Without cores of its own the
    process keeps its affinity and every timing phase takes the node lock.
    """
    import torch

    n = max(1, int(cpus))
    if n > len(_ALL_CORES):
        place = Placement([], True)
    else:
        place = reserve_cores(n)
    place.shared = place.shared or shared
    before_threads = torch.get_num_threads()
    before_cores = os.sched_getaffinity(0)
    try:
        if place.cores:
            os.sched_setaffinity(0, place.cores)
        torch.set_num_threads(len(place.cores) or n)
        yield place
    finally:
        torch.set_num_threads(before_threads)
        os.sched_setaffinity(0, before_cores)
        for f in place._files:
            f.close()  # closing releases the flock


@contextlib.contextmanager
def _flock(name: str, mode: int) -> Iterator[None]:
    # fcntl here, not compress.fs.file_lock (filelock): timing phases share the node lock
    # (LOCK_SH) while work takes it alone, and core reservations try without waiting
    # (LOCK_NB); filelock has exclusive, blocking locks only
    path = LOCK_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def timing_phase(place: Placement) -> Iterator[None]:
    """Exclusive use of the node while timing, when trials cannot keep to their own cores.

    A turnstile lock in front of the node lock gives a waiting timer precedence over work that
    arrives after it (flock alone would let a stream of shared holders starve it).
    """
    if not place.shared:
        yield
        return
    with _flock("turnstile.lock", fcntl.LOCK_EX), _flock("node.lock", fcntl.LOCK_EX):
        yield


@contextlib.contextmanager
def work_phase(place: Placement) -> Iterator[None]:
    """Training or generation: shared with other work, never with a timing phase."""
    if not place.shared:
        yield
        return
    with _flock("turnstile.lock", fcntl.LOCK_EX):
        pass  # wait behind any timer already queued
    with _flock("node.lock", fcntl.LOCK_SH):
        yield

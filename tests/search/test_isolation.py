"""Trials keep to cores of their own; where they cannot, timing waits for the node's work."""

from __future__ import annotations

import os
import threading
import time

import pytest

from compress.search import isolation


@pytest.fixture(autouse=True)
def private_locks(tmp_path, monkeypatch):
    monkeypatch.setattr(isolation, "LOCK_DIR", tmp_path / "locks")


def test_a_trial_holds_and_pins_cores_of_its_own() -> None:
    import torch

    before = os.sched_getaffinity(0)
    with isolation.pinned(1) as place:
        assert len(place.cores) == 1 and not place.shared
        assert os.sched_getaffinity(0) == set(place.cores)
        assert torch.get_num_threads() == 1
        if len(isolation._ALL_CORES) > 1:  # a second reservation gets another core
            other = isolation.reserve_cores(1, wait_s=0)
            assert other.cores and other.cores != place.cores
            for f in other._files:
                f.close()
        else:
            assert isolation.reserve_cores(1, wait_s=0).shared
    assert os.sched_getaffinity(0) == before
    with isolation.pinned(len(isolation._ALL_CORES) + 1) as place:  # more than the node has
        assert place.shared and place.cores == []


def test_timing_waits_for_work_on_a_shared_node() -> None:
    place = isolation.Placement([], True)
    events: list[str] = []
    working = threading.Event()

    def work() -> None:
        with isolation.work_phase(place):
            working.set()
            time.sleep(0.5)
            events.append("work done")

    t = threading.Thread(target=work)
    t.start()
    working.wait()
    with isolation.timing_phase(place):
        events.append("timing")
    t.join()
    assert events == ["work done", "timing"]
    own = isolation.Placement([0], False)
    with isolation.timing_phase(own), isolation.work_phase(own):
        pass  # cores of its own: no node lock, no wait

"""The training loop under a distributed launch: two CPU processes (gloo), synchronised weights,
one checkpoint, resume. On GPUs the same path runs under `accelerate launch --multi_gpu`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("ddp_script.py")


def _run(folder: Path, steps: int, results: Path) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    launch = ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port)]
    args = [str(SCRIPT), str(folder), str(steps), str(results)]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads((results / f"rank{i}.json").read_text()) for i in range(2)]


def test_two_processes_train_one_model_and_resume(tmp_path: Path) -> None:
    ckpts, results = tmp_path / "ckpt", tmp_path / "results"
    results.mkdir()
    first = _run(ckpts, 6, results)
    assert [r["world"] for r in first] == [2, 2] and [r["steps"] for r in first] == [6, 6]
    assert first[0]["weight"] == first[1]["weight"]  # gradients were all-reduced
    ckpt = ckpts / "checkpoint-6"
    assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    again = _run(ckpts, 9, results)
    assert [r["resumed"] for r in again] == [6, 6] and again[0]["weight"] == again[1]["weight"]
    assert [p.name for p in ckpts.iterdir()] == ["checkpoint-9"]

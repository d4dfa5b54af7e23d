"""A real two-node Ray cluster on 127.0.0.1 (`ray start`), searched through --ray-address."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from compress.search.ledger import read_records

pytestmark = pytest.mark.xdist_group("ray")  # one Ray cluster at a time

ROOT = Path(__file__).resolve().parents[2]
SPACE = {
    "name": "tiny",
    "search": {"trials": 3, "max_concurrent": 2, "cpus_per_trial": 1},
    "evaluation": {"num_prompts": 2, "timed_runs": 1, "warmup": 0, "resolution": 16},
    "staged": {"prompts": 1},
    "transforms": {"sampler": {"fixed": {"steps": 1}}},
    "knobs": {
        "scheduler": {
            "sets": "sampler.scheduler",
            "type": "categorical",
            "choices": ["euler", "ddim", "unipc"],
        }
    },
}


def _cluster_script():
    spec = importlib.util.spec_from_file_location(
        "local_ray_cluster", ROOT / "scripts" / "local_ray_cluster.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes_with(address: str, env: dict[str, str], resource: str) -> list[str]:
    code = (
        f"import ray, json; ray.init(address={address!r}, logging_level='ERROR'); "
        f"print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and {resource!r} in "
        "n['Resources']]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_search_through_ray_address_on_a_mixed_two_node_cluster(tiny_dir, tmp_path):
    cluster = _cluster_script()
    state = Path(tempfile.mkdtemp(prefix="crt", dir="/tmp"))  # short: Ray's socket paths
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    run = tmp_path / "run"
    try:
        # The second node alone has the (made-up) accelerator type trials are pinned to.
        address = cluster.start(
            _free_port(),
            state,
            cpus=1,
            timeout=90,
            worker_resources={"accelerator_type:TESTGPU": 1},
        )
        env = cluster.cluster_env(state)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "compress",
                "search",
                "--model",
                str(tiny_dir),
                "--space",
                str(space),
                "--metric",
                "fidelity",
                "--out",
                str(run),
                "--ray-address",
                address,
                "--target-gpu",
                "TESTGPU",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Pareto front" in done.stdout
        records = read_records(run)
        assert len(records) == 3 and all(r.state in ("complete", "stopped") for r in records)
        [gpu_node] = _nodes_with(address, env, "accelerator_type:TESTGPU")
        assert {r.node for r in records} == {gpu_node}  # never on the head node
        assert (run / "report.html").is_file() and list((run / "recipes").glob("*.yaml"))
        # An accelerator type the cluster lacks is refused up front, naming what it has.
        missing = subprocess.run(
            [
                sys.executable,
                "-m",
                "compress",
                "search",
                "--model",
                str(tiny_dir),
                "--space",
                str(space),
                "--metric",
                "fidelity",
                "--out",
                str(tmp_path / "run2"),
                "--ray-address",
                address,
                "--target-gpu",
                "H100",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert missing.returncode == 1
        assert "accelerator_type:H100" in missing.stderr and "TESTGPU" in missing.stderr
    finally:
        pids = (
            json.loads((state / "pids.json").read_text()) if (state / "pids.json").exists() else []
        )
        cluster.stop(state, grace=5)
        shutil.rmtree(state, ignore_errors=True)
    assert pids and not any(cluster._group_alive(p) for p in pids)  # nothing left running

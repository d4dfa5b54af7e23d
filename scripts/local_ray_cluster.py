"""Start or stop a two-node Ray cluster on this machine (127.0.0.1), for trying `--ray-address`.

    python scripts/local_ray_cluster.py start --port 6390 --state /tmp/compress-ray
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/tmp/compress-ray/auth_token
    compress search --ray-address 127.0.0.1:6390 --trials 8
    python scripts/local_ray_cluster.py stop --state /tmp/compress-ray

The cluster uses Ray's token authentication with its own token (printed `export` line), so it
neither needs nor touches ~/.ray. Each node is one `ray start --block` process in its own process
group; `stop` ends exactly those groups (never `ray stop`, which ends every Ray process on the
machine, other users' clusters too).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


def cluster_env(state: Path) -> dict[str, str]:
    """Environment for the nodes and for any driver joining the cluster."""
    return {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(state / "auth_token"),
    }


def _node(args: list[str], state: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [_ray(), "start", "--block", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=cluster_env(state),
        )


def _nodes_alive(address: str, state: Path) -> int:
    """How many nodes the cluster at `address` reports alive (0 if it does not answer)."""
    code = (
        f"import ray; ray.init(address={address!r}, log_to_driver=False, logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env=cluster_env(state),
        )
    except subprocess.TimeoutExpired:
        return 0
    lines = done.stdout.strip().splitlines()
    return int(lines[-1]) if done.returncode == 0 and lines and lines[-1].isdigit() else 0


def start(
    port: int,
    state: Path,
    cpus: int = 1,
    timeout: float = 120.0,
    worker_resources: dict[str, float] | None = None,
) -> str:
    """Start the head and one worker node; return the cluster address once both are up.

    `worker_resources` gives the second node custom resources, e.g. {"accelerator_type:H100": 1}
    to make a mixed cluster on which `--target-gpu H100` must pick that node.
    """
    state.mkdir(parents=True, exist_ok=True)
    token = state / "auth_token"
    token.write_text(secrets.token_hex(32))  # the format `ray get-auth-token --generate` uses
    token.chmod(0o600)
    address = f"{HOST}:{port}"
    common = ["--num-cpus", str(cpus), "--node-ip-address", HOST, "--disable-usage-stats"]
    head = _node(
        [
            "--head",
            "--port",
            str(port),
            "--include-dashboard",
            "false",
            "--temp-dir",
            str(state / "head"),
            *common,
        ],
        state,
        state / "head.log",
    )
    pids = [head.pid]
    (state / "pids.json").write_text(json.dumps(pids))
    try:
        _wait(lambda: _nodes_alive(address, state) >= 1, timeout, "the head node", state)
        extra = ["--resources", json.dumps(worker_resources)] if worker_resources else []
        worker = _node(
            ["--address", address, "--temp-dir", str(state / "worker"), *common, *extra],
            state,
            state / "worker.log",
        )
        pids.append(worker.pid)
        (state / "pids.json").write_text(json.dumps(pids))
        _wait(lambda: _nodes_alive(address, state) >= 2, timeout, "the second node", state)
    except BaseException:
        stop(state)
        raise
    return address


def _wait(ready, timeout: float, what: str, state: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            return
        time.sleep(1.0)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s; see the logs in {state}")


def stop(state: Path, grace: float = 10.0) -> None:
    """End the process groups `start` created: SIGTERM, then SIGKILL after `grace` seconds."""
    path = state / "pids.json"
    if not path.is_file():
        return
    pids = json.loads(path.read_text())
    for pid in reversed(pids):
        _signal_group(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and any(_group_alive(p) for p in pids):
        time.sleep(0.5)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)
    end = time.monotonic() + grace
    while True:
        for pid in pids:  # reap the nodes if this process started them (else init does)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if not any(_group_alive(p) for p in pids) or time.monotonic() > end:
            break
        time.sleep(0.2)
    path.unlink()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the group id is the node's pid (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=6390)
    parser.add_argument(
        "--state",
        type=Path,
        default=Path("/tmp/compress-ray"),
        help="Folder for the node logs, Ray's temp files and the pids.",
    )
    parser.add_argument("--cpus", type=int, default=1, help="CPUs each node offers.")
    parser.add_argument(
        "--worker-resources",
        type=json.loads,
        default=None,
        help="Custom resources of the second node (JSON), e.g. '{\"accelerator_type:H100\": 1}'.",
    )
    args = parser.parse_args()
    if args.command == "start":
        address = start(args.port, args.state, args.cpus, worker_resources=args.worker_resources)
        print(
            f"cluster at {address}; to join it:\n"
            f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={args.state / 'auth_token'}"
        )
    else:
        stop(args.state)


if __name__ == "__main__":
    main()

"""A real two-node Ray cluster on this machine (a head and a second node, one CPU each) for tests/ray/.

The nodes are `ray start --block` processes this fixture starts, each in its own process group, and stops
by those groups: never `ray stop`, which would end every Ray process of the user (other test runs' too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 120
STOP_GRACE_S = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each node's process group (its `ray start --block`, raylet, GCS and workers), then SIGKILL
    to what is left of them after a short grace: the cluster is thrown away, nothing in it needs saving."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """The address of the cluster; this test process is connected to it (ray.init) for the session."""
    import ray

    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must stay short
    port = _free_port()
    address = f"127.0.0.1:{port}"
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    node = ["--num-cpus", "1", "--block", "--disable-usage-stats", "--temp-dir", str(temp),
            "--object-store-memory", str(128 << 20), "--node-ip-address", "127.0.0.1",
            "--dashboard-agent-listen-port", str(_free_port())]
    procs: list[subprocess.Popen] = []
    log = open(temp / "nodes.log", "ab")  # noqa: SIM115 - closed at teardown
    try:
        head = [ray_bin, "start", "--head", "--port", str(port), "--include-dashboard=false", *node]
        procs.append(subprocess.Popen(head, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True))
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError(f"the Ray head did not start: see {temp / 'nodes.log'}")
            time.sleep(0.5)
        procs.append(subprocess.Popen([ray_bin, "start", "--address", address, *node], stdout=log,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True))
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            if time.monotonic() > deadline or procs[1].poll() is not None:
                raise RuntimeError(f"the second Ray node did not join: see {temp / 'nodes.log'}")
            time.sleep(0.5)
        yield address
    finally:
        ray.shutdown()
        _stop(procs)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)

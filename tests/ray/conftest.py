"""A real two-node Ray cluster on this machine (a head and a second node, one CPU each) for the Ray engine's tests.

Started once per session with `ray start --block` in its own temp dir and stopped by the PIDs it started (never
`ray stop`, which stops every Ray on the machine). Without the ray extra these tests are skipped, unless
PIPELINE_REQUIRE_RAY is set (`make test-ray`), where a missing Ray is an error.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

if os.environ.get("PIPELINE_REQUIRE_RAY"):
    import ray  # noqa: F401  (make test-ray: a missing extra fails here, it is not skipped)
else:
    pytest.importorskip("ray", reason="the ray extra is not installed (make test-ray installs it)")

import contextlib

from pipeline.emulator.profile import DEFAULT_CREDENTIALS

STARTUP_S = 180.0  # two nodes on a busy 2-core machine


@dataclass
class Cluster:
    address: str  # 127.0.0.1:<port> of the head
    temp_dir: Path
    processes: list[subprocess.Popen[bytes]]

    def embed_worker_pids(self) -> list[int]:
        """The processes of the embedding actors (Ray Data's pool workers) this cluster runs now."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [p.pid for p in self.processes]
        while todo:
            pid = todo.pop()
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"MapBatches(EmbedActor)" in title:
                found.append(pid)
            todo += children.get(pid, [])
        return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    ray = Path(sys.executable).with_name("ray")
    with log.open("wb") as out:  # (the child keeps its own copy of the descriptor)
        return subprocess.Popen([str(ray), "start", *args, "--num-cpus", "1", "--disable-usage-stats",
                                 "--node-ip-address", "127.0.0.1", "--object-store-memory", str(150 << 20),
                                 "--block"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def _wait_started(process: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while b"Ray runtime started" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed or timed out: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each `ray start --block` (it stops what it started), then SIGKILL whatever is left of its group."""
    for p in reversed(processes):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in reversed(processes):
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Cluster]:
    # A short temp dir: Ray's unix sockets live under it, and a socket path may not pass 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIGACHAT_", "PIPELINE_", "RAY_"))}
    # The workers' credentials come from the environment their node started in (the emulator's key);
    # a node asked to stop does so at once instead of draining for 30 s.
    env.update(GIGACHAT_CREDENTIALS=DEFAULT_CREDENTIALS, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    port = _free_port()
    processes: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + STARTUP_S
    try:
        processes.append(_start(["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", str(temp),
                                 "--dashboard-port", str(_free_port())], temp / "head.log", env))
        _wait_started(processes[0], temp / "head.log", deadline)
        processes.append(_start(["--address", f"127.0.0.1:{port}"], temp / "node.log", env))
        _wait_started(processes[1], temp / "node.log", deadline)
        yield Cluster(f"127.0.0.1:{port}", temp, processes)
    finally:
        _stop(processes)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_connected(ray_cluster: Cluster) -> Cluster:
    """This test process joined to the cluster (as the engine joins it), once both nodes are in."""
    import ray

    from pipeline.engine_ray import connect

    connect(ray_cluster.address)
    deadline = time.monotonic() + STARTUP_S
    while sum(1 for n in ray.nodes() if n["Alive"]) < 2:
        assert time.monotonic() < deadline, "the second node never joined"
        time.sleep(0.5)
    return ray_cluster


@pytest.fixture(scope="session")
def ray_address(ray_connected: LocalCluster) -> str:
    """The cluster's address, this test process joined to it (the sharded index build's tests)."""
    return ray_connected.address

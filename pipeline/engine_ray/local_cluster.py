"""A Ray cluster of several nodes on this machine, for tests, benchmarks and trying --engine ray out.

Each node is a `ray start --block` in a temp dir of its own, stopped by the PIDs started here: never
`ray stop`, which stops every Ray of the user on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocalCluster", "local_cluster"]

STARTUP_S = 180.0  # nodes on a busy 2-core machine start slowly
OBJECT_STORE_BYTES = 150 << 20


@dataclass
class LocalCluster:
    address: str  # 127.0.0.1:<port> of the head
    temp_dir: Path
    processes: list[subprocess.Popen[bytes]]

    def embed_worker_pids(self) -> list[int]:
        """The processes of the Ray engine's embedding workers this cluster runs now."""
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
            with contextlib.suppress(OSError):
                if b"MapBatches(EmbedActor)" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            todo += children.get(pid, [])
        return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], cpus: int, log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    ray = Path(sys.executable).with_name("ray")
    with log.open("wb") as out:  # (the child keeps its own copy of the descriptor)
        return subprocess.Popen([str(ray), "start", *args, "--num-cpus", str(cpus), "--disable-usage-stats",
                                 "--node-ip-address", "127.0.0.1", "--object-store-memory", str(OBJECT_STORE_BYTES),
                                 "--block"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env), start_new_session=True)


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


@contextlib.contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1, env: Mapping[str, str] | None = None
                  ) -> Iterator[LocalCluster]:
    """A head and nodes - 1 more, each with cpus_per_node CPUs; `env` is what their workers see (credentials).

    Raises RuntimeError when a node does not start within STARTUP_S.
    """
    # A short temp dir: Ray's unix sockets live under it, and a socket path may not pass 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    # A node asked to stop does so at once, instead of draining for 30 s.
    env = {**(os.environ if env is None else env), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    port = _free_port()
    processes: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + STARTUP_S
    try:
        processes.append(_start(["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", str(temp),
                                 "--dashboard-port", str(_free_port())], cpus_per_node, temp / "head.log", env))
        _wait_started(processes[0], temp / "head.log", deadline)
        for i in range(1, nodes):
            processes.append(_start(["--address", f"127.0.0.1:{port}"], cpus_per_node, temp / f"node{i}.log", env))
            _wait_started(processes[-1], temp / f"node{i}.log", deadline)
        yield LocalCluster(f"127.0.0.1:{port}", temp, processes)
    finally:
        _stop(processes)
        shutil.rmtree(temp, ignore_errors=True)

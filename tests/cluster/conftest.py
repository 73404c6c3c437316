"""A real two-node Ray cluster on this machine (a head and a second node, one CPU each) for the Ray engine's tests.

Started once per session (engine_ray.local_cluster: `ray start --block` in its own temp dir, stopped by its PIDs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from pipeline.emulator.profile import DEFAULT_CREDENTIALS
from pipeline.engine_ray.local_cluster import STARTUP_S, LocalCluster, local_cluster


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalCluster]:
    # The workers' credentials come from the environment their node started in: the emulator's key.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIGACHAT_", "PIPELINE_", "RAY_"))}
    with local_cluster(nodes=2, cpus_per_node=1, env={**env, "GIGACHAT_CREDENTIALS": DEFAULT_CREDENTIALS}) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def ray_connected(ray_cluster: LocalCluster) -> LocalCluster:
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

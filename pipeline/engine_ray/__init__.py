"""The Ray engine: embed and reindex read, chunk and embed on a Ray cluster; this process stays the one writer.

Ray is imported only when the engine runs (the pipeline[ray] extra); missing or unreachable is one ConfigError.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings

from ..config import Config, EngineConfig
from ..embedding import EmbedStats
from ..errors import ConfigError
from ..run import RunState

__all__ = ["MISSING_RAY", "RayEngine", "connect"]

MISSING_RAY = "--engine ray needs the ray extra: pip install 'pipeline[ray]'"
NAMESPACE = "pipeline"  # where the named limiter actors live (engine_ray.limiter)
PROBE_TIMEOUT_S = 5.0  # ray.init retries an address that does not answer for many minutes: ask first


class RayEngine:
    """run.Engine on a Ray cluster: Ray Data tasks read and chunk, an actor pool embeds (driver.py)."""

    name = "ray"
    embeds_here = False

    def __init__(self, settings: EngineConfig) -> None:
        self.settings = settings
        self.workers = 0

    def check(self, config: Config) -> None:
        """Refuse what the cluster cannot do, find Ray, join the cluster. Raises ConfigError (exit 2)."""
        if config.chunking.exact_tokens:
            raise ConfigError("--exact-tokens: not with --engine ray (every chunking task would ask the service "
                              "for counts outside the key's shared rate limit); use --engine local")
        if config.images.vision_model:
            raise ConfigError("[images] vision_model: images are not described with --engine ray; unset it "
                              "(or PIPELINE_VISION_MODEL) or use --engine local")
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError:
            raise ConfigError(MISSING_RAY) from None
        connect(self.settings.ray_address)

    def run(self, state: RunState) -> EmbedStats:
        from .driver import run_on_ray

        stats, self.workers = run_on_ray(state, self.settings)
        return stats


def connect(address: str) -> None:
    """Join the cluster at `address`; "" leaves the choice to Ray (RAY_ADDRESS, the latest local cluster, or a
    new one on this machine). Once per process. Raises ConfigError naming the option when nothing answers."""
    import ray

    if ray.is_initialized():
        return
    target, where = (address, "--ray-address") if address else (os.environ.get("RAY_ADDRESS", ""), "RAY_ADDRESS")
    if target and target not in ("auto", "local"):
        _probe(target, where)
    # What Ray prints that says nothing to a user of this command: its C++ core's notes on every run (an
    # actor's constructor arguments live in the object store; RAY_BACKEND_LOG_LEVEL set by hand wins),
    # "progress bars disabled" (ours are drawn), a pool wider than a small corpus's blocks, and a worker's
    # error with its stack (the run's one error line says it).
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    # Ray Data's usage collector asks a Prometheus on localhost:9090 after every run (none here).
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    for name in ("ray.data._internal.progress", "ray.data.exceptions",
                 "ray.data._internal.execution.streaming_executor_state"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
    try:
        ray.init(address=address or None, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        lines = str(e).strip().splitlines()
        raise ConfigError(f"{where} {target or '(none)'}: cannot join the Ray cluster: "
                          f"{lines[0] if lines else type(e).__name__}") from None


def _probe(target: str, where: str) -> None:
    """A TCP connection to the head's port within PROBE_TIMEOUT_S, else one ConfigError naming `where`."""
    hostport = target.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{where} {target!r}: expected HOST:PORT of the cluster's head (its GCS port, 6379 by "
                          "default) or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise ConfigError(f"{where} {target}: no Ray cluster answers there ({reason})") from None

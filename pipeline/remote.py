"""Remote: an output on object storage (s3://, gs://, file://) as a local mirror synced through pyarrow.fs.

A writer pulls the remote CURRENT's snapshot into the mirror, runs as usual, pushes the new snapshot, moves
the remote CURRENT last; readers pull what CURRENT names when it moved. A lease object keeps writers apart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.parquet as pq
from filelock import FileLock, Timeout
from pyarrow import fs as pafs

from .config import Config
from .errors import ConfigError, LockHeldError, StoreError
from .store import CURRENT, META_KEY, SNAPSHOTS, Snapshot, publish_snapshot, write_json_atomic

__all__ = ["LEASE", "Remote", "live_fingerprint", "reading", "synced"]

log = logging.getLogger("pipeline.remote")
T = TypeVar("T")

LEASE = ".lease"  # the writer's lease object, beside CURRENT
STATE_FILE = ".remote.json"  # in a mirror: the remote CURRENT it last saw (pulled or pushed)
HISTORY = ("run-report.json", "runs.jsonl")  # a writer's reports, kept beside CURRENT as in a local output
TRANSFER_THREADS = 4  # files moved at once: object stores serve requests in parallel, one is latency-bound
READ_LOCK_WAIT_S = 600.0  # a reader waits this long for another reader pulling the same snapshot


def _local_current(mirror: Path) -> str | None:
    try:
        return (mirror / CURRENT).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _state(mirror: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((mirror / STATE_FILE).read_text(encoding="utf-8")))
    except (FileNotFoundError, ValueError):
        return {}


class Remote:
    """One remote output (its file system and root) and the operations the mirror needs, each bounded.

    Every call goes through `_call`, so a failure is a StoreError naming the URI and never a credential.
    """

    def __init__(self, config: Config) -> None:
        self.uri, self.config = config.out_uri, config
        scheme, rest = self.uri.split("://", 1)
        self.root = rest.rstrip("/")
        self.fs = self._filesystem(scheme, rest.split("/", 1)[0])
        if scheme != "file":
            bucket = rest.split("/", 1)[0]
            found = self._call("checking the bucket", self.fs.get_file_info, bucket)
            if found.type == pafs.FileType.NotFound:
                where = f" at {config.storage.endpoint_url}" if config.storage.endpoint_url else ""
                raise ConfigError(f"--out {self.uri}: bucket {bucket!r} does not exist{where}")

    def _filesystem(self, scheme: str, bucket: str) -> pafs.FileSystem:
        storage = self.config.storage
        if scheme == "file":
            return pafs.LocalFileSystem()
        if scheme == "gs":
            return pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=storage.request_timeout_s
                                                                 * storage.max_attempts))
        options: dict[str, Any] = {
            "connect_timeout": storage.connect_timeout_s, "request_timeout": storage.request_timeout_s,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=storage.max_attempts)}
        if storage.endpoint_url:
            options["endpoint_override"] = storage.endpoint_url
        region = storage.region
        if not region and not storage.endpoint_url:  # AWS itself: the bucket says where it lives
            region = self._call("finding the bucket's region", pafs.resolve_s3_region, bucket)
        if region:
            options["region"] = region
        return pafs.S3FileSystem(**options)

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except OSError as e:  # pyarrow's errors name the bucket, key and AWS error, not the credentials
            raise StoreError(f"{self.uri}: {what}: {' '.join(str(e).split())}") from None

    def _key(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _read(self, key: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                with self.fs.open_input_stream(key) as f:
                    return bytes(f.read())
            except FileNotFoundError:
                return None

        return self._call(f"reading {key}", read)

    def _write(self, key: str, data: bytes) -> None:
        """One object put (the atomic switch on an object store); on a mounted file system a rename."""
        local = isinstance(self.fs, pafs.LocalFileSystem)

        def write() -> None:
            if local:
                self.fs.create_dir(key.rsplit("/", 1)[0], recursive=True)
            target = f"{key}.{uuid.uuid4().hex[:8]}.tmp" if local else key
            with self.fs.open_output_stream(target) as out:
                out.write(data)
            if local:
                self.fs.move(target, key)

        self._call(f"writing {key}", write)

    def current(self) -> str | None:
        """The snapshot the remote CURRENT names; None when nothing was pushed yet."""
        data = self._read(self._key(CURRENT))
        name = data.decode().strip() if data is not None else ""
        return name or None

    def files(self, name: str) -> dict[str, int]:
        """Sizes of snapshot `name`'s files, by path inside it (one listing)."""
        base = self._key(SNAPSHOTS, name)
        infos = self._call(f"listing {base}", self.fs.get_file_info,
                           pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return {i.path[len(base) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}

    def pull(self, name: str, mirror: Path) -> int:
        """Bring snapshot `name` into mirror/snapshots/name; a file the mirror has at the same size is kept
        (snapshots are write-once). Returns the bytes downloaded. Raises StoreError, FileNotFoundError when a
        file vanished meanwhile (the snapshot was retired: read CURRENT again)."""
        remote = self.files(name)
        if not remote:
            raise FileNotFoundError(f"{self.uri}: snapshot {name} is gone")
        target = mirror / SNAPSHOTS / name
        todo = [(rel, size) for rel, size in remote.items()
                if not (target / rel).is_file() or (target / rel).stat().st_size != size]

        def download(rel: str) -> None:
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                key = self._key(SNAPSHOTS, name, rel)
                with self.fs.open_input_stream(key) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)

        self._each(f"pulling snapshot {name}", download, [rel for rel, _ in todo])
        for rel, size in remote.items():
            if (target / rel).stat().st_size != size:
                raise StoreError(f"{self.uri}: pulled {name}/{rel} is {(target / rel).stat().st_size} bytes, "
                                 f"the remote one {size}")
        return sum(size for _, size in todo)

    def push(self, mirror: Path, name: str) -> int:
        """Upload snapshot `name` from the mirror (a file already there at its size is kept: a retried push),
        then check every remote size. Returns the bytes uploaded. Raises StoreError."""
        source = mirror / SNAPSHOTS / name
        local = {str(p.relative_to(source)): p.stat().st_size for p in sorted(source.rglob("*"))
                 if p.is_file() and not p.name.endswith(".tmp")}
        there = self.files(name)
        todo = [rel for rel, size in local.items() if there.get(rel) != size]
        make_dirs = isinstance(self.fs, pafs.LocalFileSystem)

        def upload(rel: str) -> None:
            key = self._key(SNAPSHOTS, name, rel)
            if make_dirs:
                self.fs.create_dir(key.rsplit("/", 1)[0], recursive=True)
            with open(source / rel, "rb") as src, self.fs.open_output_stream(key) as out:
                shutil.copyfileobj(src, out, 8 << 20)

        self._each(f"pushing snapshot {name}", upload, todo)
        there = self.files(name)
        wrong = sorted(rel for rel, size in local.items() if there.get(rel) != size)
        if wrong:
            raise StoreError(f"{self.uri}: snapshot {name} is incomplete after the push ({len(wrong)} files "
                             f"missing or of another size, e.g. {wrong[0]})")
        return sum(local[rel] for rel in todo)

    def _each(self, what: str, fn: Callable[[str], None], items: list[str]) -> None:
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            for future in [pool.submit(self._call, f"{what}: {item}", fn, item) for item in items]:
                future.result()

    def switch(self, name: str) -> None:
        """Point the remote CURRENT at `name`: the one write readers see."""
        self._write(self._key(CURRENT), f"{name}\n".encode())

    def retire(self, keep: set[str]) -> list[str]:
        """Delete every remote snapshot but `keep` (the live one, its rollback), as a local publish does."""
        base = self._key(SNAPSHOTS)
        infos = self._call(f"listing {base}", self.fs.get_file_info,
                           pafs.FileSelector(base, recursive=False, allow_not_found=True))
        gone = [i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name not in keep]
        for name in gone:
            self._call(f"deleting snapshot {name}", self.fs.delete_dir, self._key(SNAPSHOTS, name))
        return gone

    def fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint of the remote live snapshot, from its vectors' Parquet footer (ranged reads, not
        the manifest, which grows with the corpus), as store.snapshot_fingerprint reads a local one."""
        name = self.current()
        if name is None:
            return None
        key = self._key(SNAPSHOTS, name, "vectors.parquet")
        schema = self._call(f"reading {key}", lambda: pq.read_schema(key, filesystem=self.fs))
        try:
            fingerprint = json.loads((schema.metadata or {}).get(META_KEY, b"{}")).get("fingerprint")
        except ValueError:
            fingerprint = None
        return fingerprint if isinstance(fingerprint, dict) else None

    # The lease: who writes this prefix now. Object stores have no locks; see `synced` for what it covers.

    def take_lease(self) -> _Lease:
        lease = _Lease(self)
        held = self._lease()
        if held is not None and held.get("writer") != lease.writer and not _lapsed(held):
            raise LockHeldError(_held_message(self.uri, held))
        lease.renew()
        held = self._lease()  # two writers that both saw no lease: the later put wins, the other backs off
        if held is None or held.get("writer") != lease.writer:
            raise LockHeldError(_held_message(self.uri, held or {}))
        lease.start()
        return lease

    def _lease(self) -> dict[str, Any] | None:
        data = self._read(self._key(LEASE))
        try:
            return dict(json.loads(data)) if data else None
        except ValueError:
            return None  # an unreadable lease protects nobody


def _lapsed(held: dict[str, Any]) -> bool:
    """Past its expiry, or written by a process of this host that no longer exists (a killed run)."""
    if float(held.get("expires_at", 0)) < time.time():
        return True
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held.get("pid", 0)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, OverflowError):
            return False
    return False


def _held_message(uri: str, held: dict[str, Any]) -> str:
    left = float(held.get("expires_at", 0)) - time.time()
    return (f"{uri}: another writer holds the lease ({held.get('host', '?')} pid {held.get('pid', '?')}, "
            f"lapses in {max(0.0, left):.0f} s unless renewed); one writer per prefix")


class _Lease:
    """A writer's lease object: host, pid and expiry, renewed by a heartbeat thread until released."""

    def __init__(self, remote: Remote) -> None:
        self.remote, self.writer = remote, uuid.uuid4().hex
        self.ttl = remote.config.storage.lease_ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def renew(self) -> None:
        now = time.time()
        body = {"writer": self.writer, "host": socket.gethostname(), "pid": os.getpid(),
                "started_at": self._started, "renewed_at": now, "expires_at": now + self.ttl}
        self.remote._write(self.remote._key(LEASE), json.dumps(body).encode())

    def start(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.ttl / 3):
                try:
                    self.renew()
                except StoreError as e:  # the next beat tries again; the lease lapses only after ttl
                    log.warning("lease not renewed: %s", e)

        self._thread = threading.Thread(target=beat, name="pipeline-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.remote.config.storage.request_timeout_s)
        try:
            held = self.remote._lease()
            if held is not None and held.get("writer") == self.writer:
                self.remote._call("releasing the lease", self.remote.fs.delete_file, self.remote._key(LEASE))
        except (StoreError, FileNotFoundError) as e:  # it lapses by itself
            log.warning("lease not released: %s", e)


@contextlib.contextmanager
def synced(config: Config) -> Iterator[None]:
    """For the holder of the mirror's lock: the remote's live snapshot in the mirror before the block, the
    mirror's new one pushed after it (when the block ends normally). A local output passes through.

    Order of a push: every file of the new snapshot, a size check of each, then CURRENT (readers switch
    there), then the remote retention (all but the new snapshot and its rollback). A failed push leaves
    CURRENT as it was; the next run pushes again. Writers are kept apart by the mirror's lock on one machine
    and by a lease object (LockHeldError, exit 75) across machines; the lease is advisory and not atomic:
    one writer per prefix.
    """
    if not config.out_uri:
        yield
        return
    remote = Remote(config)
    mirror = config.out_dir
    lease = remote.take_lease()
    try:
        started_from = _reconcile(remote, mirror)
        yield
        _publish(remote, mirror, started_from)
    finally:
        lease.release()


def _reconcile(remote: Remote, mirror: Path) -> str | None:
    """Bring the mirror to the remote CURRENT; returns that name. A snapshot published here whose push failed
    (the remote still names what this mirror last saw there) is kept: this run builds on it and pushes."""
    live, known, local = remote.current(), _state(mirror).get("current"), _local_current(mirror)
    if local is not None and local != live and live == known:
        log.warning("%s: snapshot %s was published in %s but never pushed; this run pushes its successor",
                    remote.uri, local, mirror)
    elif live is None:
        (mirror / CURRENT).unlink(missing_ok=True)  # the remote was emptied: so is the mirror's view of it
    else:
        try:
            pulled = remote.pull(live, mirror)
        except FileNotFoundError:
            raise StoreError(f"{remote.uri}: snapshot {live} that CURRENT names is gone (another writer?)"
                             ) from None
        if local != live:
            previous = mirror / SNAPSHOTS / local if local else None
            publish_snapshot(mirror, Snapshot(mirror / SNAPSHOTS / live),
                             Snapshot(previous) if previous is not None and previous.is_dir() else None)
        log.info("%s: snapshot %s in the mirror (%d bytes pulled)", remote.uri, live, pulled)
    write_json_atomic({"uri": remote.uri, "current": live}, mirror / STATE_FILE)
    history = mirror / HISTORY[1]
    data = remote._read(remote._key(HISTORY[1])) if not history.is_file() else None
    if data:  # a new mirror (another machine) carries the prefix's run history on
        history.write_bytes(data)
    return live


def _publish(remote: Remote, mirror: Path, started_from: str | None) -> None:
    name = _local_current(mirror)
    if name is None or name == started_from:
        return
    now = remote.current()
    if now != started_from:
        raise StoreError(f"{remote.uri}: CURRENT moved from {started_from} to {now} during this run (another "
                         f"writer?); {name} stays in {mirror}, unpublished: one writer per prefix")
    try:
        sent = remote.push(mirror, name)
        remote.switch(name)
    except (StoreError, FileNotFoundError) as e:
        raise StoreError(f"{remote.uri}: push of snapshot {name} failed; the remote CURRENT still names "
                         f"{started_from} (readers keep it) and the next run pushes again: "
                         f"{str(e).removeprefix(remote.uri + ': ')}") from None
    write_json_atomic({"uri": remote.uri, "current": name}, mirror / STATE_FILE)
    log.info("%s: pushed snapshot %s (%d bytes), CURRENT moved", remote.uri, name, sent)
    try:  # CURRENT has moved: what follows is housekeeping, retried by the next run
        remote.retire({name} | ({started_from} if started_from else set()))
        for file in HISTORY:
            if (mirror / file).is_file():
                remote._write(remote._key(file), (mirror / file).read_bytes())
    except StoreError as e:
        log.warning("%s", e)


def reading(config: Config, *, must_exist: bool = True) -> Config:
    """`config` reading the remote live snapshot from a local copy (pulled when CURRENT moved); a local
    output passes through. Raises StoreError when nothing was pushed yet (unless not must_exist)."""
    if not config.out_uri:
        return config
    remote = Remote(config)
    try:
        return _reader_view(config, remote, must_exist)
    except FileNotFoundError:  # retired while we pulled: CURRENT has moved on, so once more from the new one
        try:
            return _reader_view(config, remote, must_exist)
        except FileNotFoundError as e:
            raise StoreError(f"{config.out_uri}: the live snapshot vanished twice while pulled: {e}"
                             ) from None


def _reader_view(config: Config, remote: Remote, must_exist: bool) -> Config:
    live = remote.current()
    if live is None and must_exist:
        raise StoreError(f"{config.out_uri}: nothing embedded yet; run `pipeline embed --out "
                         f"{config.out_uri}` first")
    if live is not None and _local_current(config.out_dir) == live:
        return config.with_out(config.out_dir)  # this machine's writer has it already
    copy = config.out_dir.with_name(config.out_dir.name + ".read")  # apart from a writer's mirror and lock
    _refresh(remote, copy, live)
    return config.with_out(copy)


def _refresh(remote: Remote, copy: Path, live: str | None) -> None:
    copy.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(copy / ".lock", timeout=READ_LOCK_WAIT_S):
            local = _local_current(copy)
            if local == live:
                return
            if live is None:
                (copy / CURRENT).unlink(missing_ok=True)
                return
            pulled = remote.pull(live, copy)
            previous = copy / SNAPSHOTS / local if local else None
            publish_snapshot(copy, Snapshot(copy / SNAPSHOTS / live),
                             Snapshot(previous) if previous is not None and previous.is_dir() else None)
            log.info("%s: pulled snapshot %s (%d bytes) into %s", remote.uri, live, pulled, copy)
    except Timeout:
        raise StoreError(f"{copy}: another process has been pulling {remote.uri} for "
                         f"{READ_LOCK_WAIT_S:.0f} s") from None


def live_fingerprint(config: Config) -> dict[str, Any] | None:
    """The fingerprint of the remote output's live snapshot (None before the first push)."""
    return Remote(config).fingerprint()

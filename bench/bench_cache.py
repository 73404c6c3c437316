"""Benchmark the vector cache: put / get_many / missing per 100 vectors, and start-up with many cached.

Old = the Parquet-parts cache that loaded every part at start (copied below from pipeline/store.py as it was
before the SQLite cache); new = pipeline.cache.VectorCache. Also: one connection behind a lock against one
connection per thread, under two writer and two reader threads, and synchronous=NORMAL against FULL.
Writes bench/cache.md's numbers to stdout as Markdown.  Usage: python bench/bench_cache.py [--startup-n 100000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cache import VectorCache, _connect, normalize_rows
from pipeline.store import _matrix, _vector_array, write_table_atomic

_DIR: str | None = None  # where the caches are made (--dir; default: the system's temporary directory)


class OldVectorCache:
    """pipeline/store.py's VectorCache before the SQLite one (commit 55358a2), unchanged but for the name."""

    def __init__(self, root: Path, key: str, dimension: int, *, normalize: bool = False) -> None:
        self.dir = root / "vectors" / key
        self.dimension = dimension
        self.normalize = normalize
        self._rows: dict[str, int] = {}
        self._blocks: list[np.ndarray] = []
        self._starts: list[int] = []
        self._size = 0
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if not self.dir.is_dir():
            return
        for part in sorted(self.dir.glob("part-*.parquet")):
            try:
                table = pq.read_table(part)
            except (pa.ArrowInvalid, OSError):
                continue
            column = table.column("vector").combine_chunks()
            if not isinstance(column.type, pa.FixedSizeListType) or column.type.list_size != self.dimension:
                continue
            self._add(table.column("content_hash").to_pylist(), _matrix(column, part))

    def _add(self, hashes: Sequence[str], matrix: np.ndarray) -> None:
        block = np.array(matrix, dtype=np.float32)
        if self.normalize:
            normalize_rows(block)
        base = self._size
        self._blocks.append(block)
        self._starts.append(base)
        self._size += len(hashes)
        for i, h in enumerate(hashes):
            self._rows[h] = base + i

    def __contains__(self, content_hash: str) -> bool:
        return content_hash in self._rows

    def missing(self, hashes: Sequence[str]) -> list[str]:  # what callers did: `h not in cache` per hash
        return [h for h in dict.fromkeys(hashes) if h not in self]

    def get_many(self, hashes: Sequence[str]) -> np.ndarray:
        out = np.empty((len(hashes), self.dimension), np.float32)
        with self._lock:
            rows = np.fromiter((self._rows[h] for h in hashes), dtype=np.int64, count=len(hashes))
            starts = np.asarray(self._starts, dtype=np.int64)
            blocks = list(self._blocks)
        which = np.searchsorted(starts, rows, side="right") - 1
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(len(blocks) + 1))
        for b, block in enumerate(blocks):
            picked = order[bounds[b]:bounds[b + 1]]
            if len(picked):
                out[picked] = block[rows[picked] - starts[b]]
        return out

    def put(self, hashes: Sequence[str], matrix: np.ndarray) -> None:
        table = pa.table({"content_hash": pa.array(list(hashes), pa.string()), "vector": _vector_array(matrix)})
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.parquet"
        write_table_atomic(table, self.dir / name)
        with self._lock:
            self._add(hashes, matrix)


class PerThreadCache(VectorCache):
    """The new cache with one SQLite connection per thread instead of one behind a lock."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self._local = threading.local()
        super().__init__(*args, **kwargs)

    @contextmanager
    def _locked(self) -> Iterator:
        db = getattr(self._local, "db", None)
        if db is None:
            with self._lock:
                self._open()  # the file and its schema
            db = self._local.db = _connect(self.path)
        yield db


class FullSyncCache(VectorCache):
    """The new cache with synchronous=FULL (an fsync per commit, as the old part files had)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self._db.execute("PRAGMA synchronous=FULL")


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.2f}"


def _timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _fill(cache: object, n: int, dim: int, rng: np.random.Generator, batch: int = 100) -> list[str]:
    keys = [uuid.uuid4().hex * 2 for _ in range(n)]  # 64 hex characters, like a sha256 content hash
    for b in range(0, n, batch):
        cache.put(keys[b:b + batch], rng.normal(size=(min(batch, n - b), dim)).astype(np.float32))
    return keys


def _per_100_one(cls: type, dim: int, cached: int, repeat: int, rng: np.random.Generator) -> dict[str, str]:
    with tempfile.TemporaryDirectory(dir=_DIR) as tmp:
        cache = cls(Path(tmp), "k", dim)
        keys = _fill(cache, cached, dim, rng)
        block = rng.normal(size=(100, dim)).astype(np.float32)
        put = _timed(lambda: cache.put([uuid.uuid4().hex * 2 for _ in range(100)], block), repeat)

        def pick() -> list[str]:
            return [keys[i] for i in rng.integers(0, len(keys), 100)]

        get = _timed(lambda: cache.get_many(pick()), repeat)
        probe = [*pick()[:50], *(uuid.uuid4().hex * 2 for _ in range(50))]  # half cached, half not

        def ask() -> None:
            if isinstance(cache, VectorCache):
                cache._known.clear()  # each call goes to SQLite, as the first lookup of a hash in a run does
            cache.missing(probe)

        miss = _timed(ask, repeat)
        return {"put": _ms(put), "get_many": _ms(get), "missing": _ms(miss)}


def per_100(dim: int, cached: int, repeat: int) -> dict[str, dict[str, str]]:
    rng = np.random.default_rng(0)
    return {name: _per_100_one(cls, dim, cached, repeat, rng)
            for name, cls in (("old (Parquet parts)", OldVectorCache), ("new (SQLite, synchronous=NORMAL)", VectorCache),
                              ("new (SQLite, synchronous=FULL)", FullSyncCache))}


def startup(n: int, dim: int) -> dict[str, str]:
    rng = np.random.default_rng(1)
    out = {}
    with tempfile.TemporaryDirectory(dir=_DIR) as tmp:
        root = Path(tmp)
        keys = _fill(OldVectorCache(root, "k", dim), n, dim, rng)  # 100-vector part files, as a run wrote them
        parts = len(list((root / "vectors" / "k").glob("part-*")))
        t = time.perf_counter()
        old = OldVectorCache(root, "k", dim)
        out["old open (load every part)"] = f"{time.perf_counter() - t:.2f} s ({parts} part files, " \
            f"{sum(b.nbytes for b in old._blocks) / 1e6:.0f} MB of vectors in memory)"
        del old
        t = time.perf_counter()
        VectorCache(root, "k", dim).close()
        out["first new open (one-time import of those parts)"] = f"{time.perf_counter() - t:.2f} s"
        t = time.perf_counter()
        cache = VectorCache(root, "k", dim)
        out["new open"] = f"{(time.perf_counter() - t) * 1e3:.1f} ms (nothing loaded)"
        t = time.perf_counter()
        missing = cache.missing(keys)
        out[f"new missing() over all {n} hashes (a fully cached rerun)"] = f"{time.perf_counter() - t:.2f} s"
        assert not missing
    return out


def _threads_one(cls: type, dim: int) -> float:
    with tempfile.TemporaryDirectory(dir=_DIR) as tmp:
        cache = cls(Path(tmp), "k", dim)
        rng = np.random.default_rng(2)
        keys = _fill(cache, 5000, dim, rng)
        block = rng.normal(size=(100, dim)).astype(np.float32)

        def writer() -> None:
            for _ in range(100):
                cache.put([uuid.uuid4().hex * 2 for _ in range(100)], block)

        def reader(seed: int) -> None:
            r = np.random.default_rng(seed)
            for _ in range(100):
                pick = [keys[i] for i in r.integers(0, len(keys), 100)]
                cache._known.clear()
                cache.missing(pick)
                cache.get_many(pick)

        ts = [threading.Thread(target=writer) for _ in range(2)] + \
             [threading.Thread(target=reader, args=(s,)) for s in range(2)]
        t = time.perf_counter()
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        return time.perf_counter() - t


def threads(dim: int) -> dict[str, str]:
    """Two writer threads (embedding batches) and two reader threads (missing + get_many), 100 vectors each."""
    return {name: f"{_threads_one(cls, dim):.2f} s"
            for name, cls in (("one connection + lock", VectorCache), ("one connection per thread", PerThreadCache))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--startup-n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--dir", help="Directory for the caches (default: the system's temporary directory).")
    args = parser.parse_args()
    global _DIR
    _DIR = args.dir
    print(f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}, "
          f"{platform.machine()}, load {Path('/proc/loadavg').read_text().split()[:3]}\n")
    print("Per call of 100 vectors, median of", args.repeat, "ms (10,000 vectors cached; missing(): 50 cached, "
          "50 not, on an instance that has not seen them)\n")
    print("| dim | cache | put | get_many | missing |\n|---:|---|---:|---:|---:|")
    for dim in (1024, 2560):
        for name, row in per_100(dim, 10_000, args.repeat).items():
            print(f"| {dim} | {name} | {row['put']} | {row['get_many']} | {row['missing']} |")
    print("\nStart-up with", args.startup_n, "cached vectors of 1024-d\n")
    for name, value in startup(args.startup_n, 1024).items():
        print(f"- {name}: {value}")
    print("\nTwo writer + two reader threads, 200 puts and 200 (missing + get_many) of 100 vectors, 1024-d\n")
    for name, value in threads(1024).items():
        print(f"- {name}: {value}")


if __name__ == "__main__":
    main()

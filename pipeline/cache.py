"""Cache: raw vectors by content hash for one model key, in one SQLite file looked up per batch.

Knows SQLite, the cache's schema and the old Parquet-parts layout it imports; never snapshots, providers or FAISS.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import StoreError

__all__ = ["CacheKeyStats", "PruneReport", "PruneResult", "VectorCache", "cache_stats", "normalize_rows", "prune_cache"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_SUFFIX = ".sqlite3"
LOOKUP_CHUNK = 900  # hashes per `IN (...)`: under SQLite's oldest parameter limit (999)
KNOWN_MAX = 200_000  # hashes remembered as present (~20 MB), then forgotten and asked again
MAX_CORRUPT_WARNINGS = 10  # per cache instance; the rest are counted only
_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    hash   TEXT PRIMARY KEY,    -- the chunk's content hash
    crc    INTEGER NOT NULL,    -- zlib.crc32 of vector
    vector BLOB NOT NULL        -- dimension x float32, little-endian (the service's raw vector)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """L2-normalise rows in place (zero rows stay zero) and return the matrix."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0)
    return matrix


def _chunks(items: Sequence[str], size: int = LOOKUP_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                             isolation_level=None)
    else:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL: a commit survives the process (kill -9); a power cut may lose the last few, never corrupts
        db.execute("PRAGMA synchronous=NORMAL")
    return db


class VectorCache:
    """Raw vectors by content hash for one model key: `<root>/vectors/<key>.sqlite3`, nothing held in memory.

    Each put is one transaction (all of a batch or none of it, also under kill -9). Every entry carries a
    crc32; a corrupt, short or wrong-dimension one is warned about, counted in `corrupt` and treated as
    missing, so it is embedded again and overwritten. With normalize=True the file stays raw but reads give
    unit rows. Thread-safe: one connection behind a lock (bench/cache.md measured it against one per thread).
    An old `<root>/vectors/<key>/part-*.parquet` cache is imported on first open, then removed.
    """

    def __init__(self, root: Path, key: str, dimension: int, *, normalize: bool = False,
                 read_only: bool = False) -> None:
        self.path = root / "vectors" / f"{key}{DB_SUFFIX}"
        self.key = key
        self.dimension = dimension
        self.normalize = normalize
        # Lookups only, beside the one process that writes (the Ray engine's workers); opened once the file exists.
        self.read_only = read_only
        self.corrupt = 0  # entries found corrupt by this instance (each also logged, up to a limit)
        self._row_bytes = 4 * dimension
        # Hashes this instance wrote or verified, so `in` asks SQLite once per hash; forgotten past KNOWN_MAX,
        # so a run's memory does not grow with its corpus.
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None  # opened by the first write, or now if the file exists
        old_dir = root / "vectors" / key
        if read_only:
            self._attach()
        elif self.path.exists() or old_dir.is_dir():
            self._open()
            self._import_parts(old_dir)

    def _attach(self) -> None:
        """Read-only: connect once the writer has created the file (until then every hash is missing)."""
        if self.read_only and self._db is None and self.path.exists():
            try:
                self._db = _connect(self.path, read_only=True)
            except sqlite3.DatabaseError as e:
                raise StoreError(f"{self.path}: cannot open the vector cache: {e}") from None

    def _open(self) -> sqlite3.Connection:
        """The connection, creating the file and its schema if needed (under self._lock or in __init__)."""
        if self._db is None:
            if self.read_only:
                raise StoreError(f"{self.path}: the vector cache is open read-only here")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                db = _connect(self.path)
                db.executescript(_SCHEMA)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('dimension', ?), ('key', ?), ('schema', ?)",
                           (str(self.dimension), self.key, str(SCHEMA_VERSION)))
            except sqlite3.DatabaseError as e:
                raise StoreError(f"{self.path}: cannot open the vector cache: {e}") from None
            self._db = db
        return self._db

    # -- lookups -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        if self._db is None:  # nothing was ever written (a plan on a fresh cache creates no file)
            return 0
        with self._locked() as db:
            return int(db.execute("SELECT count(*) FROM vectors").fetchone()[0])

    def __contains__(self, content_hash: str) -> bool:
        return not self.missing([content_hash])

    def missing(self, hashes: Iterable[str]) -> list[str]:
        """The hashes (distinct, in first-seen order) with no sound entry: absent, or corrupt (then counted)."""
        wanted = [h for h in dict.fromkeys(hashes) if h not in self._known]
        self._attach()
        if not wanted or self._db is None:
            return wanted
        good: set[str] = set()
        with self._locked() as db:
            for part in _chunks(wanted):
                rows = db.execute(f"SELECT hash, crc, vector FROM vectors WHERE hash IN ({_marks(len(part))})",
                                  part).fetchall()
                good.update(h for h, crc, blob in rows if self._sound(h, crc, blob))
            self._remember(good)
        return [h for h in wanted if h not in good]

    def get_many(self, hashes: Sequence[str]) -> np.ndarray:
        """Vectors for hashes that are all present, in the given order (a new float32 matrix).

        Raises StoreError naming a hash with no sound entry (missing() would have listed it).
        """
        distinct = list(dict.fromkeys(hashes))
        blobs: dict[str, bytes] = {}
        self._attach()
        if self._db is None:  # nothing was ever written
            if distinct:
                raise StoreError(f"{self.path}: no cached vector for {distinct[0]} (the cache is empty)")
            return np.empty((0, self.dimension), np.float32)
        with self._locked() as db:
            for part in _chunks(distinct):
                for h, crc, blob in db.execute(
                        f"SELECT hash, crc, vector FROM vectors WHERE hash IN ({_marks(len(part))})", part):
                    if self._sound(h, crc, blob):
                        blobs[h] = blob
        if len(blobs) != len(distinct):
            absent = next(h for h in distinct if h not in blobs)
            raise StoreError(f"{self.path}: no sound cached vector for {absent} ({len(distinct) - len(blobs)} missing)")
        out = np.frombuffer(b"".join([blobs[h] for h in hashes]), dtype="<f4").astype(np.float32)
        out = out.reshape(len(hashes), self.dimension)
        return normalize_rows(out) if self.normalize else out

    def _remember(self, hashes: Iterable[str]) -> None:
        if len(self._known) > KNOWN_MAX:
            self._known.clear()
        self._known.update(hashes)

    def _sound(self, content_hash: str, crc: int, blob: bytes) -> bool:
        if len(blob) == self._row_bytes and zlib.crc32(blob) == crc:
            return True
        self.corrupt += 1
        if self.corrupt <= MAX_CORRUPT_WARNINGS:
            why = "checksum mismatch" if len(blob) == self._row_bytes else \
                f"{len(blob)} bytes instead of {self._row_bytes} (dimension {self.dimension})"
            log.warning("vector cache %s: entry %s is corrupt (%s); embedding it again", self.key, content_hash, why)
        return False

    # -- writes --------------------------------------------------------------------------------------------

    def put(self, hashes: Sequence[str], matrix: np.ndarray) -> None:
        """Persist a block of vectors in one transaction (replacing entries of the same hashes)."""
        if len(hashes) == 0:
            return
        if matrix.shape != (len(hashes), self.dimension):
            raise StoreError(f"cache put: shape {matrix.shape} for {len(hashes)} hashes of dim {self.dimension}")
        raw = np.ascontiguousarray(matrix, dtype="<f4").tobytes()
        step = self._row_bytes
        rows = []
        for i, h in enumerate(hashes):
            blob = raw[i * step:(i + 1) * step]
            rows.append((h, zlib.crc32(blob), blob))
        with self._locked() as db:
            self._write(db, rows)
            self._remember(hashes)

    def _write(self, db: sqlite3.Connection, rows: Iterable[tuple[str, int, bytes]]) -> None:
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO vectors (hash, crc, vector) VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def prune(self, live: Collection[str], *, dry_run: bool = False) -> PruneResult:
        """Delete every entry whose hash is not in `live`, then VACUUM (unless dry_run)."""
        before = self._file_bytes()
        with self._locked() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS live (hash TEXT PRIMARY KEY)")
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM temp.live")
                db.executemany("INSERT OR IGNORE INTO temp.live VALUES (?)", ((h,) for h in live))
                dead = "FROM vectors WHERE hash NOT IN (SELECT hash FROM temp.live)"
                removed, removed_bytes = db.execute(f"SELECT count(*), coalesce(sum(length(vector)), 0) {dead}").fetchone()
                kept = db.execute("SELECT count(*) FROM vectors").fetchone()[0] - removed
                if not dry_run:
                    db.execute(f"DELETE {dead}")
                db.execute("DELETE FROM temp.live")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if not dry_run and removed:
                db.execute("VACUUM")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._known.intersection_update(live)
        after = self._file_bytes()
        return PruneResult(self.key, int(removed), int(kept), int(removed_bytes), before, after, max(0, before - after),
                           dry_run)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _file_bytes(self) -> int:
        return _db_bytes(self.path)

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._open()
            except sqlite3.DatabaseError as e:
                raise StoreError(f"{self.path}: vector cache: {e}") from None

    # -- migration -----------------------------------------------------------------------------------------

    def _import_parts(self, old_dir: Path) -> None:
        """Import an old Parquet-parts cache in one transaction; remove its directory once that committed."""
        if not old_dir.is_dir():
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        def rows() -> Iterator[tuple[str, int, bytes]]:
            for part in sorted(old_dir.glob("part-*.parquet")):  # oldest first: a later part wins, as before
                try:
                    table = pq.read_table(part)
                except (pa.ArrowInvalid, OSError):  # a foreign or vanished file (another process migrated it)
                    continue
                column = table.column("vector").combine_chunks()
                if not isinstance(column.type, pa.FixedSizeListType) or column.type.list_size != self.dimension:
                    continue
                flat = column.flatten().to_numpy(zero_copy_only=False).astype("<f4", copy=False)
                raw = np.ascontiguousarray(flat).tobytes()
                step = self._row_bytes
                for i, h in enumerate(table.column("content_hash").to_pylist()):
                    blob = raw[i * step:(i + 1) * step]
                    yield h, zlib.crc32(blob), blob

        with self._locked() as db:
            self._write(db, rows())
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # Removed, not renamed to .migrated: the rows are committed in the database, and a kept copy would
        # double the disk the cache takes, which is what this store is for. A crash before this line only
        # means the (idempotent) import runs again on the next open.
        shutil.rmtree(old_dir, ignore_errors=True)
        log.info("vector cache %s: imported %s into %s", self.key, old_dir, self.path)


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


@dataclass(frozen=True)
class PruneResult:
    """What prune removed from one key's cache: entries, their vector bytes, and the file before and after."""

    key: str
    removed: int
    kept: int
    removed_vector_bytes: int
    file_bytes_before: int
    file_bytes_after: int
    bytes_freed: int  # on disk: file_bytes_before - file_bytes_after (VACUUM gives the pages back)
    dry_run: bool = False


@dataclass(frozen=True)
class CacheKeyStats:
    """One model key's cache: entries, their vector bytes, the file's bytes (an old Parquet-parts one: format)."""

    key: str
    path: str
    format: str  # "sqlite", or "parquet-parts" (imported the next time that model runs)
    dimension: int | None
    entries: int
    vector_bytes: int
    file_bytes: int


def cache_stats(root: Path) -> list[CacheKeyStats]:
    """Every key under `<root>/vectors`, read-only (an old Parquet-parts directory is listed, not imported)."""
    base = root / "vectors"
    if not base.is_dir():
        return []
    stats = []
    for path in sorted(base.iterdir()):
        if path.is_file() and path.name.endswith(DB_SUFFIX):
            stats.append(_db_stats(path))
        elif path.is_dir():
            stats.append(_parts_stats(path))
    return stats


def _db_stats(path: Path) -> CacheKeyStats:
    key = path.name[:-len(DB_SUFFIX)]
    try:
        db = _connect(path, read_only=True)
        try:
            entries, vector_bytes = db.execute("SELECT count(*), coalesce(sum(length(vector)), 0) FROM vectors").fetchone()
            row = db.execute("SELECT value FROM meta WHERE name = 'dimension'").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: unreadable vector cache: {e}") from None
    return CacheKeyStats(key, str(path), "sqlite", int(row[0]) if row else None, int(entries), int(vector_bytes),
                         _db_bytes(path))


def _parts_stats(path: Path) -> CacheKeyStats:
    import pyarrow as pa
    import pyarrow.parquet as pq

    entries = size = 0
    dimension = None
    for part in path.glob("part-*.parquet"):
        size += part.stat().st_size
        try:
            f = pq.ParquetFile(part)
        except (pa.ArrowInvalid, OSError):
            continue
        entries += f.metadata.num_rows
        field = f.schema_arrow.field("vector").type
        if isinstance(field, pa.FixedSizeListType):
            dimension = field.list_size
    return CacheKeyStats(path.name, str(path), "parquet-parts", dimension, entries,
                         entries * 4 * (dimension or 0), size)


@dataclass
class PruneReport:
    """What `pipeline cache prune` did: one result per examined key; the other keys were left alone."""

    root: str
    results: list[PruneResult] = field(default_factory=list)
    untouched_keys: list[str] = field(default_factory=list)  # no given output directory uses them
    dry_run: bool = False
    removed: int = 0  # entries, over every examined key
    bytes_freed: int = 0


def prune_cache(root: Path, live: Mapping[str, tuple[int, Collection[str]]], *, dry_run: bool = False) -> PruneReport:
    """For each key of `live` (key -> (dimension, live content hashes)), delete the entries no hash of it names.

    Keys not in `live` are not touched (listed in untouched_keys); a key with nothing cached is skipped.
    """
    report = PruneReport(str(root), dry_run=dry_run)
    for key, (dimension, hashes) in sorted(live.items()):
        if not (root / "vectors" / f"{key}{DB_SUFFIX}").exists() and not (root / "vectors" / key).is_dir():
            continue
        cache = VectorCache(root, key, dimension)  # imports an old Parquet-parts cache first
        try:
            report.results.append(cache.prune(hashes, dry_run=dry_run))
        finally:
            cache.close()
    report.untouched_keys = [s.key for s in cache_stats(root) if s.key not in live]
    report.removed = sum(r.removed for r in report.results)
    report.bytes_freed = sum(r.bytes_freed for r in report.results)
    return report

"""The DuckDB database exports are loaded into, and the cache that keeps it.

DuckDB holds no more than ``memory_limit`` of the loaded tables in memory and
spills the rest to temporary files, so a month of a large tenant's sign-ins
loads without holding it all in RAM. Without a cache the tables live in an
in-memory database (spilling to a temporary folder removed afterwards): the
fastest way to load, hunt and forget. With one (``tokenward hunt --cache
FILE``) they are written, compressed, to a DuckDB file keyed by every export
file's path, size and modification time and by tokenward's schema version, so
a second hunt over the same export opens the tables instead of parsing the
files again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import duckdb_kql

from connectors.exports.loader import ExportLoader, LoadSummary, Progress, export_files
from connectors.exports.schemas import SCHEMA_VERSION
from playbooks.errors import ExportError, Location

logger = logging.getLogger(__name__)

#: What DuckDB may hold in memory while loading and querying; the rest of the
#: tables stays in the database file.
MEMORY_LIMIT = "1GB"
_CACHE_TABLE = "tokenward_cache"


@dataclass(frozen=True)
class LoadedExports:
    """A connection over loaded tables, what was loaded, and whether it was cached."""

    con: Any
    summary: LoadSummary
    reused: bool
    # The cache file, or the temporary folder an in-memory load spills to.
    database: Path


def connect(
    path: Path | None, *, memory_limit: str = MEMORY_LIMIT, spill: Path | None = None
) -> Any:
    """A DuckDB connection to *path* (in memory if None), with bounded memory.

    What does not fit in *memory_limit* goes to *spill*, by default a folder
    beside the database file.
    """
    con = duckdb_kql.connect(str(path) if path else ":memory:")
    folder = spill or (path.with_name(path.name + ".tmp") if path else None)
    con.execute(f"SET memory_limit = '{_checked_limit(memory_limit)}'")
    if folder is not None:
        con.execute(f"SET temp_directory = '{_sql_path(folder)}'")
    return con


def cache_key(files: Sequence[Path], *, skip_bad_records: bool) -> str:
    """What a cached load depends on: the files as they are now, and how they load."""
    described = [
        {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        for path, stat in ((path, path.stat()) for path in files)
    ]
    basis = {
        "schema_version": SCHEMA_VERSION,
        "skip_bad_records": skip_bad_records,
        "files": described,
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def load_exports(
    directory: Path,
    *,
    cache: Path | None = None,
    skip_bad_records: bool = False,
    on_progress: Progress | None = None,
    memory_limit: str = MEMORY_LIMIT,
) -> Iterator[LoadedExports]:
    """The exports under *directory* loaded, from *cache* when it is current.

    Without *cache* the tables live in a temporary database removed on exit.
    """
    files = export_files(directory)
    key = cache_key(files, skip_bad_records=skip_bad_records)
    loader: Callable[[Any], LoadSummary] = lambda con: ExportLoader(  # noqa: E731
        con, on_progress=on_progress, skip_bad_records=skip_bad_records
    ).load_files(files)

    if cache is None:
        folder = Path(tempfile.mkdtemp(prefix="tokenward-exports-"))
        con = connect(None, memory_limit=memory_limit, spill=folder)
        try:
            yield LoadedExports(con, loader(con), reused=False, database=folder)
        finally:
            con.close()
            shutil.rmtree(folder, ignore_errors=True)
        return

    con, summary = _cached(cache, key, memory_limit)
    reused = summary is not None
    if summary is None:
        con, summary = _rebuild(cache, key, loader, memory_limit)
    try:
        yield LoadedExports(con, summary, reused=reused, database=cache)
    finally:
        con.close()


def _cached(cache: Path, key: str, memory_limit: str) -> tuple[Any, LoadSummary | None]:
    """An open connection to *cache* and its summary when its key is *key*."""
    if not cache.exists():
        return None, None
    try:
        con = connect(cache, memory_limit=memory_limit)
    except duckdb.Error as error:
        raise ExportError(
            f"cannot open it as a tokenward cache: {str(error).splitlines()[0]}",
            source=Location(file=str(cache)),
        ) from None
    try:
        row = con.execute(f"SELECT key, summary FROM {_CACHE_TABLE}").fetchone()
    except duckdb.Error:
        con.close()
        raise ExportError(
            "a DuckDB database that is not a tokenward cache: give --cache a path "
            "of its own (tokenward replaces the file when the exports change)",
            source=Location(file=str(cache)),
        ) from None
    if row is not None and row[0] == key:
        logger.info("reusing the tables cached in %s", cache)
        return con, LoadSummary.from_json(row[1])
    con.close()
    logger.info("the cache in %s is for other files or another version", cache)
    return None, None


def _rebuild(
    cache: Path, key: str, loader: Callable[[Any], LoadSummary], memory_limit: str
) -> tuple[Any, LoadSummary]:
    # Build beside the cache and move it into place only once complete, so a
    # failed or interrupted load never leaves a cache that looks current.
    cache.parent.mkdir(parents=True, exist_ok=True)
    building = cache.with_name(cache.name + ".building")
    _remove(building)
    con = connect(building, memory_limit=memory_limit)
    try:
        summary = loader(con)
        con.execute(f"CREATE TABLE {_CACHE_TABLE} (key VARCHAR, summary VARCHAR)")
        con.execute(f"INSERT INTO {_CACHE_TABLE} VALUES (?, ?)", [key, summary.to_json()])
        con.execute("CHECKPOINT")
    except BaseException:
        con.close()
        _remove(building)
        raise
    con.close()
    _remove(cache)
    building.replace(cache)
    return connect(cache, memory_limit=memory_limit), summary


def _remove(database: Path) -> None:
    for path in (database, database.with_name(database.name + ".wal")):
        path.unlink(missing_ok=True)
    shutil.rmtree(database.with_name(database.name + ".tmp"), ignore_errors=True)


def _checked_limit(limit: str) -> str:
    if not limit.replace(".", "").rstrip("KMGTB").isdigit():
        raise ValueError(f"not a memory size (use e.g. 1GB or 512MB): {limit!r}")
    return limit


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")

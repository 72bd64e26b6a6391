"""The DuckDB database exports are loaded into, and the cache that keeps it.

DuckDB keeps no more than ``memory_limit`` in memory. An export whose tables fit
in that is loaded into an in-memory database, the fastest way to load and hunt.
A larger one goes to a temporary DuckDB *file*: DuckDB compresses each row group
as it writes it (a million sign-ins take about 270 MB instead of 1.5 GB), so a
month of a large tenant's sign-ins loads and is hunted without holding it in
RAM. Compressing costs CPU (the load takes about twice as long), but the
alternative is worse: uncompressed tables larger than the limit spill, and every
scan of the hunt reads them back from the spill files.

With a cache (``tokenward hunt --cache FILE``) the tables always go to that
file, which is kept, keyed by every export file's path, size and modification
time and by tokenward's schema version, so a second hunt over the same export
opens the tables instead of parsing the files again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import duckdb_kql

from connectors.exports.loader import ExportLoader, LoadSummary, Progress, export_files
from connectors.exports.schemas import SCHEMA_VERSION, TABLES
from connectors.exports.shapes import exported_size
from playbooks.errors import ExportError, Location

logger = logging.getLogger(__name__)

#: What DuckDB may hold in memory while loading and querying; the rest of the
#: tables stays in the database file.
MEMORY_LIMIT = "1GB"
_CACHE_TABLE = "tokenward_cache"
# Loaded tables take about this share of the exported text in memory. An
# in-memory database holds no more than the limit and moves the rest of its
# blocks to the temporary folder: up to a few times the limit that costs less
# than compressing everything into a database file, beyond it the file wins.
_IN_MEMORY_PER_EXPORTED_BYTE = 0.7
_IN_MEMORY_SHARE = 3.0
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.I)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


@dataclass(frozen=True)
class LoadedExports:
    """A connection over loaded tables, what was loaded, and whether it was cached."""

    con: Any
    summary: LoadSummary
    reused: bool
    # The cache file, the temporary database of a large load without a cache,
    # or the temporary folder an in-memory load spills to.
    database: Path


def connect(
    path: Path | None, *, memory_limit: str = MEMORY_LIMIT, spill: Path | None = None
) -> Any:
    """A DuckDB connection to *path* (None: in memory) with bounded memory.

    What does not fit in *memory_limit* goes to *spill*, by default a folder
    beside the database file.
    """
    con = duckdb_kql.connect(str(path) if path else ":memory:")
    folder = spill or (path.with_name(path.name + ".tmp") if path else None)
    con.execute(f"SET memory_limit = '{memory_limit}'")
    if folder is not None:
        con.execute(f"SET temp_directory = '{_sql_path(folder)}'")
    return con


def memory_bytes(limit: str) -> int:
    """``1GB``, ``512MB`` or ``2GiB`` in bytes; anything else is refused."""
    match = _SIZE.match(limit)
    if not match:
        raise ValueError(f"not a memory size (use e.g. 1GB or 512MB): {limit!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def fits_in_memory(
    files: Sequence[Path],
    memory_limit: str,
    columns: Mapping[str, Collection[str]] | None = None,
) -> bool:
    """Whether the tables loaded from *files* take no more than the limit allows."""
    exported = sum(exported_size(path) for path in files)
    estimate = exported * _IN_MEMORY_PER_EXPORTED_BYTE * _kept_share(columns)
    return estimate <= memory_bytes(memory_limit) * _IN_MEMORY_SHARE


def _kept_share(columns: Mapping[str, Collection[str]] | None) -> float:
    """The share of the schema's columns a load keeps (all: 1.0)."""
    if columns is None:
        return 1.0
    total = sum(len(table.columns) for table in TABLES.values())
    kept = sum(len(columns.get(name, table.columns)) for name, table in TABLES.items())
    return kept / total


def cache_key(
    files: Sequence[Path],
    *,
    skip_bad_records: bool,
    columns: Mapping[str, Collection[str]] | None = None,
) -> str:
    """What a cached load depends on: the files as they are now, and how they load."""
    described = [
        {
            "path": str(path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
        for path, stat in ((path, path.stat()) for path in files)
    ]
    basis = {
        "schema_version": SCHEMA_VERSION,
        "skip_bad_records": skip_bad_records,
        "files": described,
        "columns": (
            None
            if columns is None
            else {table: sorted(names) for table, names in sorted(columns.items())}
        ),
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
    columns: Mapping[str, Collection[str]] | None = None,
) -> Iterator[LoadedExports]:
    """The exports under *directory* loaded, from *cache* when it is current.

    Without *cache* the tables live in a temporary database removed on exit.
    With *columns*, only those columns of each table are stored (the ones the
    playbook's queries name); the cache remembers which.
    """
    files = export_files(directory)
    memory_bytes(memory_limit)
    key = cache_key(files, skip_bad_records=skip_bad_records, columns=columns)

    def loader(con: Any) -> LoadSummary:
        return ExportLoader(
            con, on_progress=on_progress, skip_bad_records=skip_bad_records, columns=columns
        ).load_files(files)

    if cache is None:
        folder = Path(tempfile.mkdtemp(prefix="tokenward-exports-"))
        if fits_in_memory(files, memory_limit, columns):
            database = folder
            con = connect(None, memory_limit=memory_limit, spill=folder)
        else:
            database = folder / "exports.duckdb"
            con = connect(database, memory_limit=memory_limit)
            # The file is thrown away: writing it out in full on close is wasted.
            con.execute("PRAGMA disable_checkpoint_on_shutdown")
        logger.info(
            "loading %d file(s) into %s",
            len(files),
            "memory" if database == folder else database,
        )
        try:
            yield LoadedExports(con, loader(con), reused=False, database=database)
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


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")

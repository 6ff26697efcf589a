"""SQL over the Parquet tables of every study under a results location (DuckDB).

Each table name (trials, psnr, samples, pairs, transition, ...) is a view over that table's
files (one per study and trial, pair or study) in all studies below the location, so one query can
compare studies; `study_id` tells them apart. The files are read through the store's filesystem,
so a results URI (s3://...) is queried exactly like a local folder.
"""

from __future__ import annotations

from ..errors import UserInputError
from .store import StudyStore


def run_query(sql: str, results: str) -> tuple[list[str], list[tuple]]:
    import duckdb
    import pyarrow.dataset as ds

    store = StudyStore(str(results))
    if store.is_empty():
        raise UserInputError(f"results location {results} does not exist or is empty (run a study first, or pass "
                             f"--results)")
    files = store.table_files_below()
    if not files:
        raise UserInputError(f"no tables under {results} (run a study first)")
    con = duckdb.connect()
    for name, paths in sorted(files.items()):
        factory = ds.FileSystemDatasetFactory(store.fs, paths, ds.ParquetFileFormat())
        # every file's schema: a file written by an older version may lack a newer column
        con.register(name, factory.finish(factory.inspect(promote_options="permissive", fragments=None)))
    try:
        cursor = con.execute(sql)
    except duckdb.Error as exc:
        raise UserInputError(f"query failed: {exc}\ntables: {', '.join(sorted(files))}") from None
    return [d[0] for d in cursor.description], cursor.fetchall()

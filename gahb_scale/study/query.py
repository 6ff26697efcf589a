"""SQL over the Parquet tables of every study under a results location (DuckDB).

Each table name (trials, psnr, samples, pairs, transition, ...) is a view over that table's
files (one per study and trial, pair or study) in all studies below the location, so one query can
compare studies; `study_id` tells them apart. The files are read through the store's filesystem,
so a results URI (s3://...) is queried exactly like a local folder.

Rows in memory are grouped by SQL too (`sql_rows` over `indexed_table`s): the study tables'
summaries.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict

import pyarrow as pa

from ..errors import UserInputError
from .store import StudyStore

# a table as the store reads it, or rows as dicts; None: a table nothing was written to yet
Rows = pa.Table | list[dict] | None


def indexed_table(rows: Rows, *columns: str) -> pa.Table:
    """`columns` of `rows`, and `row_index`: each row's place, the order a group's values are listed in."""
    if isinstance(rows, pa.Table):  # a column no file has yet (written by an older version) is null
        table = pa.table({column: rows[column] if column in rows.column_names else pa.nulls(rows.num_rows)
                          for column in columns})
    else:  # column by column, so that no rows still make a table with these columns
        table = pa.table({column: [row[column] for row in rows or []] for column in columns})
    return table.append_column("row_index", pa.array(range(table.num_rows), pa.int64()))


def row_lists(*columns: str, prefix: str = "", where: str | None = None) -> str:
    """SQL: each column's values in a group as a list, in row order (only the rows `where` holds for)."""
    kept = f" FILTER (WHERE {where})" if where else ""
    return ", ".join(f"list({column} ORDER BY row_index){kept} AS {prefix}{column}" for column in columns)


def sql_rows(sql: str, params: dict | None = None, **tables: pa.Table) -> list[dict]:
    """The rows of `sql` over in-memory `tables` (each by its keyword) as dicts."""
    import duckdb

    with duckdb.cursor() as con:  # views of its own, and safe beside other threads' queries
        for name, table in tables.items():
            con.register(name, table)
        result = con.sql(sql, params=params)
        return [dict(zip(result.columns, row)) for row in result.fetchall()]


def _note_studies_in_several_folders(files: dict[str, list[str]], root: str, results: str) -> None:
    """A study whose tables lie in more than one results folder below the root (a copy kept beside
    the original, or two studies of one name) has its rows counted once per folder: said on stderr."""
    folders = defaultdict(set)
    for path in (path for paths in files.values() for path in paths):
        folder, study = re.fullmatch(r"(.*?)/?tables/[^/]+/([^/]+)/[^/]+", path[len(root):].lstrip("/")).groups()
        folders[study].add(folder or ".")
    for study, held in sorted(folders.items()):
        if len(held) > 1:
            print(f"note: study {study}'s tables lie in {len(held)} results folders under {results} ("
                  f"{', '.join(sorted(held))}): its rows are counted once per folder; --results with one of "
                  f"them queries that one", file=sys.stderr)


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
    _note_studies_in_several_folders(files, store.root, results)
    con = duckdb.connect()
    for name, paths in sorted(files.items()):
        factory = ds.FileSystemDatasetFactory(store.fs, paths, ds.ParquetFileFormat())
        # every file's schema: a file written by an older version may lack a newer column
        con.register(name, factory.finish(factory.inspect(promote_options="permissive", fragments=None)))
    # Read-only: the tables are registered above, so a query needs no file of its own, and one that
    # writes (COPY ... TO, ATTACH) could put files into a results folder. Export: --format csv or json.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    try:  # DuckDB would run every statement and answer with the last one's rows
        statements = len(duckdb.extract_statements(sql))
        cursor = con.execute(sql) if statements == 1 else None
    except duckdb.Error as exc:
        raise UserInputError(f"query failed: {exc}\ntables: {', '.join(sorted(files))}") from None
    if cursor is None:
        raise UserInputError(f"the query holds {statements} statements; give one" if statements else
                             "the query holds no statement (it is empty, or only comments); e.g. "
                             "\"SELECT * FROM transition\"")
    return [d[0] for d in cursor.description], cursor.fetchall()

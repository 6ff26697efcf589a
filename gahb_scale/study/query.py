"""SQL over the Parquet tables of every study under a results folder (DuckDB).

Each table name (trials, psnr, samples, pairs, transition, ...) is a view over that table's
files (one per study and trial, pair or study) in all studies, so one query can compare studies;
`study_id` tells them apart.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserInputError
from .store import TABLE_KEYS


def run_query(sql: str, results: str | Path) -> tuple[list[str], list[tuple]]:
    import duckdb

    root = Path(results)
    if not root.is_dir():
        raise UserInputError(f"results folder {root} does not exist (run a study first, or pass --results)")
    con = duckdb.connect()
    found = []
    for name in TABLE_KEYS:
        files = sorted(root.glob(f"**/tables/{name}/*/*.parquet"))
        if files:
            listing = ", ".join(f"'{f.as_posix()}'" for f in files)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listing}], union_by_name = true)")
            found.append(name)
    if not found:
        raise UserInputError(f"no tables under {root} (run a study first)")
    try:
        cursor = con.execute(sql)
    except duckdb.Error as exc:
        raise UserInputError(f"query failed: {exc}\ntables: {', '.join(found)}") from None
    return [d[0] for d in cursor.description], cursor.fetchall()

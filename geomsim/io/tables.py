"""Tidy tables as `dict[str, np.ndarray]` columns, read and written as CSV or Parquet.

CSV is for the small tables people open in a spreadsheet (`results.csv`, the testbed's
tables); Parquet for the large ones (the sweep's `curves.parquet`: 120 rows per run, 1.97
million for a 16,384-run sweep, whose CSV took 15-18 s to write; benchmarks/RESULTS.md).
Either way a table read back is bit-identical to the one written: CSV floats are written
with `repr` precision, Parquet stores float64/int64/string columns as they are.
`read_table` picks the reader from the suffix; pandas and polars read both files too
(`pandas.read_parquet`, `polars.read_parquet`).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from geomsim.io.atomic import atomic_open

Table = dict[str, np.ndarray]


def _columns(table: Table) -> dict[str, np.ndarray]:
    columns = {name: np.atleast_1d(np.asarray(col)) for name, col in table.items()}
    lengths = {len(c) for c in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns differ in length: { {n: len(c) for n, c in columns.items()} }")
    return columns


def _quote(text: str) -> str:
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _format_column(col: np.ndarray) -> list[str]:
    # Column-wise and through Python's own float repr (shortest round-trip string): 16,384 rows x
    # 45 columns format in ~0.3 s, where the row-wise csv.writer with a call per value took ~2 s.
    if col.dtype.kind == "f":
        return [repr(v) for v in col.astype(np.float64).tolist()]
    if col.dtype.kind in "iu":
        return [str(v) for v in col.tolist()]
    if col.dtype.kind == "b":
        return [str(bool(v)) for v in col.tolist()]
    return [_quote(str(v)) for v in col.tolist()]


def write_csv(path: str | os.PathLike, table: Table) -> None:
    """Write columns of equal length as CSV, atomically."""
    columns = _columns(table)
    lines = [",".join(_quote(n) for n in columns)]
    lines.extend(",".join(row) for row in zip(*(_format_column(c) for c in columns.values()), strict=True))
    with atomic_open(path) as handle:
        handle.write("\r\n".join(lines) + "\r\n")  # csv.writer's line ending, as before


def read_csv(path: str | os.PathLike) -> Table:
    """Read a CSV written by `write_csv`; numeric columns become float/int arrays."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        names = next(reader)
        rows = list(reader)
    if not rows:
        return {name: np.array([], dtype=object) for name in names}
    return {name: _parse_column(list(raw)) for name, raw in zip(names, zip(*rows, strict=True), strict=True)}


def _parse_column(raw: list[str]) -> np.ndarray:
    try:
        return np.array([int(v) for v in raw], dtype=np.int64)
    except ValueError:
        pass
    try:
        return np.array([float(v) for v in raw], dtype=np.float64)
    except ValueError:
        return np.array(raw, dtype=object)


def write_parquet(path: str | os.PathLike, table: Table) -> None:
    """Write columns of equal length as one Parquet file (zstd), atomically."""
    import pyarrow as pa  # imported here: 0.3 s that only writers of large tables pay
    import pyarrow.parquet as pq

    columns = _columns(table)
    arrays = {n: pa.array(c.tolist(), type=pa.string()) if c.dtype == object else pa.array(c)
              for n, c in columns.items()}
    buffer = io.BytesIO()
    pq.write_table(pa.table(arrays), buffer, compression="zstd")
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getvalue())


def read_parquet(path: str | os.PathLike) -> Table:
    """Read a Parquet file into numpy columns (strings as object arrays)."""
    import pyarrow.parquet as pq

    data = pq.read_table(path)
    return {name: data.column(name).to_numpy(zero_copy_only=False) for name in data.column_names}


def write_table(path: str | os.PathLike, table: Table) -> None:
    """`write_csv` or `write_parquet`, by the suffix of `path` (.csv or .parquet)."""
    {".csv": write_csv, ".parquet": write_parquet}[_suffix(path)](path, table)


def read_table(path: str | os.PathLike) -> Table:
    """`read_csv` or `read_parquet`, by the suffix of `path` (.csv or .parquet)."""
    return {".csv": read_csv, ".parquet": read_parquet}[_suffix(path)](path)


def _suffix(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"path: {path} must end in .csv or .parquet")
    return suffix

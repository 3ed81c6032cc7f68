"""Tidy tables as `dict[str, np.ndarray]` columns, read and written as CSV.

Floats are written with `repr` precision (round-trip exact), so a table read
back is bit-identical to the one written.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from geomsim.io.atomic import atomic_open

Table = dict[str, np.ndarray]


def _format(value) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return str(int(value))
    return str(value)


def write_csv(path: str | os.PathLike, table: Table) -> None:
    """Write columns of equal length as CSV, atomically."""
    names = list(table)
    lengths = {len(np.atleast_1d(table[n])) for n in names}
    if len(lengths) > 1:
        raise ValueError(f"columns differ in length: { {n: len(table[n]) for n in names} }")
    with atomic_open(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in zip(*(np.atleast_1d(table[n]) for n in names), strict=True):
            writer.writerow([_format(v) for v in row])


def read_csv(path: str | os.PathLike) -> Table:
    """Read a CSV written by `write_csv`; numeric columns become float/int arrays."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        names = next(reader)
        rows = list(reader)
    table: Table = {}
    for i, name in enumerate(names):
        raw = [r[i] for r in rows]
        table[name] = _parse_column(raw)
    return table


def _parse_column(raw: list[str]) -> np.ndarray:
    try:
        return np.array([int(v) for v in raw], dtype=np.int64)
    except ValueError:
        pass
    try:
        return np.array([float(v) for v in raw], dtype=np.float64)
    except ValueError:
        return np.array(raw, dtype=object)

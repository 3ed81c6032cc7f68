"""Input/output: atomic writes, tidy tables (CSV, Parquet), run metadata."""

from geomsim.io.atomic import atomic_open, write_json
from geomsim.io.jsoncodec import dumps, loads_strict, to_jsonable
from geomsim.io.meta import environment_versions
from geomsim.io.tables import Table, read_csv, read_parquet, read_table, write_csv, write_parquet, write_table

__all__ = [
    "Table", "atomic_open", "dumps", "environment_versions", "loads_strict", "read_csv", "read_parquet", "read_table",
    "to_jsonable", "write_csv", "write_json", "write_parquet", "write_table",
]

"""geomsim.io tables: CSV and Parquet give back the very columns written."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geomsim.io import read_csv, read_table, write_csv, write_table

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
texts = st.text(alphabet=st.sampled_from('ab ,"\n\r;é'), min_size=1, max_size=6)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.lists(floats, min_size=n, max_size=n), st.lists(st.integers(-2**62, 2**62), min_size=n, max_size=n),
    st.lists(texts, min_size=n, max_size=n))))
def test_round_trip_is_exact(tmp_path_factory, columns):
    x, i, s = columns
    table = {"x": np.array(x), "i": np.array(i, dtype=np.int64), "s": np.array(s, dtype=object)}
    folder = tmp_path_factory.mktemp("t")
    for suffix in (".csv", ".parquet"):
        path = folder / f"table{suffix}"
        write_table(path, table)
        back = read_table(path)
        assert list(back) == ["x", "i", "s"]
        np.testing.assert_array_equal(back["x"], table["x"], strict=True)  # NaN == NaN here, bit for bit otherwise
        np.testing.assert_array_equal(back["i"], table["i"], strict=True)
        assert back["s"].tolist() == s


def test_csv_is_what_the_csv_module_reads(tmp_path):
    import csv

    write_csv(tmp_path / "t.csv", {"a": np.array([0.1, -np.inf]), "b": np.array(['x,"y"', "z"], dtype=object)})
    with open(tmp_path / "t.csv", newline="") as handle:
        assert list(csv.reader(handle)) == [["a", "b"], ["0.1", 'x,"y"'], ["-inf", "z"]]
    assert read_csv(tmp_path / "t.csv")["a"][0] == 0.1


def test_bad_tables_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="columns differ in length"):
        write_table(tmp_path / "t.parquet", {"a": np.zeros(2), "b": np.zeros(3)})
    with pytest.raises(ValueError, match=r"path: .*t\.txt must end in \.csv or \.parquet"):
        write_table(tmp_path / "t.txt", {"a": np.zeros(2)})

"""The README's in-order blocks (see tests/test_readme.py), in a file of their own so
that the workers can balance them against the README's other long files."""

import pytest
from test_readme import check_command, ordered_blocks


@pytest.mark.parametrize("index", range(len(ordered_blocks())))
def test_readme_ordered_block_runs(index, tmp_path):
    """An `IN_ORDER` block: its commands one after another in one folder."""
    for command in ordered_blocks()[index]:
        check_command(command, tmp_path)

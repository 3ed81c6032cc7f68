"""The README's other half: its commands outside the testbed and its Python blocks (see tests/test_readme.py)."""

import sys

import pytest
from test_readme import OTHER_COMMANDS, _run, blocks, check_command


@pytest.mark.parametrize("command", OTHER_COMMANDS)
def test_readme_command_runs(command, tmp_path):
    check_command(command, tmp_path)


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_block_runs(index, tmp_path):
    _run([sys.executable, "-c", blocks("python")[index]], cwd=tmp_path)

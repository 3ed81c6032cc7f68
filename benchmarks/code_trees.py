"""The code trees a before/after benchmark times: this checkout, and a git revision's code in a
temporary worktree (put on PYTHONPATH by the caller), removed afterwards."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def code_trees(before: str | None, tmp: Path) -> Iterator[dict[str, Path]]:
    """`{"before": worktree of REV, "after": this checkout}` (only "after" without `before`)."""
    if before is None:
        yield {"after": ROOT}
        return
    tree = tmp / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), before], check=True,
                   capture_output=True)
    try:
        yield {"before": tree, "after": ROOT}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False,
                       capture_output=True)

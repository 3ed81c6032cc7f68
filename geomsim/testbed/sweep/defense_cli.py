"""`python -m geomsim.testbed defenses`: every defense on the transformer, from the same
polished models on the same batches (see `geomsim.testbed.sweep.defenses`)."""

from __future__ import annotations

from geomsim.testbed.sweep.cli import run_command
from geomsim.testbed.sweep.defenses import TestbedDefenseConfig

PROG = "python -m geomsim.testbed defenses"
HEADLINE = ("align_increase_median", "harm_rate_median", "task_accuracy_median", "align_increase_fixed_median",
            "harm_rate_fixed_median", "task_accuracy_fixed_median", "overhead_ratio")


def _run():
    from geomsim.testbed.sweep.defenses import run_testbed_defenses

    return run_testbed_defenses


def main(argv: list[str] | None = None) -> int:
    return run_command(
        PROG, TestbedDefenseConfig, __doc__, "testbed-defenses", argv, _run,
        lambda c: (f"{', '.join(c.defenses)} on {c.grid_shape[0]} x {c.grid_shape[1]} x {c.grid_shape[2]} "
                   "points"),
        lambda s: {name: {k: d[k] for k in HEADLINE if k in d} for name, d in s["defenses"].items()})

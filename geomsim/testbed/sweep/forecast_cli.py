"""`python -m geomsim.testbed forecast`: every forecast of `Delta L_A` made at theta0,
scored against measured gradient-descent fine-tunes of the transformer (see
`geomsim.testbed.sweep.forecast`)."""

from __future__ import annotations

from geomsim.testbed.sweep.cli import run_command
from geomsim.testbed.sweep.forecast import TestbedForecastConfig

PROG = "python -m geomsim.testbed forecast"
HEADLINE = ("t_fail_ratio_median", "within_2x_fraction", "log10_error_median")


def _run():
    from geomsim.testbed.sweep.forecast import run_testbed_forecast

    return run_testbed_forecast


def main(argv: list[str] | None = None) -> int:
    return run_command(
        PROG, TestbedForecastConfig, __doc__, "testbed-forecast", argv, _run,
        lambda c: (f"{c.grid_shape[0]} x {c.grid_shape[1]} x {c.grid_shape[2]} points x {len(c.arms)} arm(s), "
                   f"{c.gd_steps} GD steps each"),
        lambda s: {name: {k: d[k] for k in HEADLINE} for name, d in s["methods"].items()}, processes=True)

"""`python -m geomsim.testbed forecast`: every forecast of `Delta L_A` made at theta0,
scored against measured gradient-descent fine-tunes of the transformer (see
`geomsim.testbed.sweep.forecast`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from geomsim.testbed.sweep.cli import build_parser, parse
from geomsim.testbed.sweep.forecast import TestbedForecastConfig

PROG = "python -m geomsim.testbed forecast"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(PROG, TestbedForecastConfig, __doc__, "runs/testbed-forecast-<timestamp>")
    parsed = parse(parser, TestbedForecastConfig, argv)
    if parsed is None:
        return 2
    config, out, plots, quiet = parsed
    from geomsim.testbed.sweep.forecast import run_testbed_forecast

    out_dir = Path(out) if out else Path("runs") / time.strftime("testbed-forecast-%Y%m%d-%H%M%S")
    levels, mixes, seeds = config.grid_shape
    print(f"geomsim testbed forecast: {levels} x {mixes} x {seeds} points x {len(config.arms)} arm(s), "
          f"{config.gd_steps} GD steps each -> {out_dir}", file=sys.stderr)
    summary = run_testbed_forecast(config, out_dir, progress=not quiet, plots=plots)
    print(json.dumps({name: {k: d[k] for k in ("t_fail_ratio_median", "within_2x_fraction", "log10_error_median")}
                      for name, d in summary["methods"].items()}, indent=1))
    print(f"wrote {out_dir}")
    return 0

"""`python -m geomsim.testbed defenses`: every defense on the transformer, from the same
polished models on the same batches (see `geomsim.testbed.sweep.defenses`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from geomsim.testbed.sweep.cli import build_parser, parse
from geomsim.testbed.sweep.defenses import TestbedDefenseConfig

PROG = "python -m geomsim.testbed defenses"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(PROG, TestbedDefenseConfig, __doc__, "runs/testbed-defenses-<timestamp>")
    parsed = parse(parser, TestbedDefenseConfig, argv)
    if parsed is None:
        return 2
    config, out, plots, quiet = parsed
    from geomsim.testbed.sweep.defenses import run_testbed_defenses

    out_dir = Path(out) if out else Path("runs") / time.strftime("testbed-defenses-%Y%m%d-%H%M%S")
    levels, mixes, seeds = config.grid_shape
    print(f"geomsim testbed defenses: {', '.join(config.defenses)} on {levels} x {mixes} x {seeds} points -> "
          f"{out_dir}", file=sys.stderr)
    summary = run_testbed_defenses(config, out_dir, progress=not quiet, plots=plots)
    print(json.dumps({name: {k: v for k, v in d.items() if k in (
        "align_increase_median", "harm_rate_median", "task_accuracy_median", "align_increase_fixed_median",
        "harm_rate_fixed_median", "task_accuracy_fixed_median", "overhead_ratio")}
        for name, d in summary["defenses"].items()}, indent=1))
    print(f"wrote {out_dir}")
    return 0

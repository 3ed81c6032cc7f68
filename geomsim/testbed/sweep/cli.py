"""`python -m geomsim.testbed sweep`: the quartic law on a transformer, over a
sharpness x coupling grid, with its controls (see `geomsim.testbed.sweep.run`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from geomsim import config as config_layer
from geomsim._runtime import enable_compilation_cache
from geomsim.config import ConfigError
from geomsim.plotting.formats import add_figures_flag, figure_formats
from geomsim.processes import ProcessLost, add_process_flags, current_group, report_error, start_processes
from geomsim.testbed.sweep.config import TestbedSweepConfig
from geomsim.watchdog import Stalled, add_stall_flag

PROG = "python -m geomsim.testbed sweep"


def build_parser(prog: str = PROG, cls=TestbedSweepConfig, doc: str | None = None,
                 default_out: str = "runs/testbed-sweep-<timestamp>", processes: bool = True
                 ) -> argparse.ArgumentParser:
    """Flags for every field of `cls`, plus --config, --out, --figures, --quiet (and the
    process-group flags when the run splits over `processes`)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=(doc or __doc__).split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    config_layer.add_flags(parser, cls)
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file with any of the settings above; flags override it")
    parser.add_argument("--out", metavar="DIR", help=f"output folder (default: {default_out}); "
                        "rerunning into it reuses every finished stage and chunk")
    add_figures_flag(parser)
    add_stall_flag(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    if processes:
        add_process_flags(parser)
    return parser


def parse(parser: argparse.ArgumentParser, cls, argv: list[str] | None):
    """`(config, out, figures, quiet, several)`, or None after printing a one-line error
    (exit status 2); `several`: this process joined a group of processes.

    Also turns on the compilation cache and float64 (the polish and the early-time
    law are below float32 resolution)."""
    args = vars(parser.parse_args(argv))
    file, out = args.pop("config", None), args.pop("out", None)
    figures, quiet = args.pop("figures"), args.pop("quiet")
    several = False
    try:
        several = start_processes(args)
        if several and out is None:
            raise ConfigError("out: several processes need --out DIR, one folder every process sees")
        config = config_layer.build(cls, file, args)
    except ConfigError as err:
        report_error(parser.prog, err, 2, several)
        return None
    import jax

    enable_compilation_cache()
    jax.config.update("jax_enable_x64", True)
    return config, out, figures, quiet, several


def run_split(prog: str, run, config, out_dir: Path, figures: str, quiet: bool, several: bool):
    """`run(config, out_dir, ...)`, with a group's errors reported in one line: returns
    `(result, exit status)`; the result is None on processes other than 0."""
    try:
        with figure_formats(figures):
            return run(config, out_dir, progress=not quiet, plots=figures != "none"), 0
    except ConfigError as err:
        return None, report_error(prog, err, 2, several)
    except ProcessLost as err:
        return None, report_error(prog, err, 1, several)
    except Stalled as err:  # a stuck thread may be left: leave at once (True)
        return None, report_error(prog, err, 1, True)


def run_command(prog: str, cls, doc: str, name: str, argv: list[str] | None, run, describe, headline,
                processes: bool = False) -> int:
    """Parse, run and print a testbed subcommand: `run()` returns the run function (imported
    late, after the flags are checked), `describe(config)` the progress line's text and
    `headline(summary)` the dict printed as JSON; output under `runs/<name>-<timestamp>` by default.
    `processes`: the run splits over a group of processes (`geomsim.processes`)."""
    parsed = parse(build_parser(prog, cls, doc, f"runs/{name}-<timestamp>", processes), cls, argv)
    if parsed is None:
        return 2
    config, out, figures, quiet, several = parsed
    out_dir = Path(out) if out else Path("runs") / time.strftime(f"{name}-%Y%m%d-%H%M%S")
    print(current_group().label(f"geomsim {name.replace('-', ' ')}: {describe(config)} -> {out_dir}"),
          file=sys.stderr)
    summary, status = run_split(prog, run(), config, out_dir, figures, quiet, several)
    if summary is None:
        return status
    print(json.dumps(headline(summary), indent=1))
    print(f"wrote {out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parsed = parse(build_parser(), TestbedSweepConfig, argv)
    if parsed is None:
        return 2
    config, out, figures, quiet, several = parsed
    from geomsim.testbed.sweep.run import run_testbed_sweep

    out_dir = Path(out) if out else Path("runs") / time.strftime("testbed-sweep-%Y%m%d-%H%M%S")
    levels, mixes, seeds = config.grid_shape
    print(current_group().label(f"geomsim testbed sweep: {levels} sharpness x {mixes} coupling x {seeds} seeds "
                                f"x 3 arms -> {out_dir}"), file=sys.stderr)
    result, status = run_split(PROG, run_testbed_sweep, config, out_dir, figures, quiet, several)
    if result is None:
        return status
    s = result.summary
    eps0 = s["arms"]["polished_eps0"]
    print(json.dumps({
        "lambda_spread": s["lambda_spread"], "gamma_spread": s["gamma_spread"],
        "s_part_exponent_median": {arm: s["arms"][arm]["s_part"]["exponent_median"] for arm in s["arms"]},
        "total_exponent_median": {arm: s["arms"][arm]["total"]["exponent_median"] for arm in s["arms"]},
        "c4_ratio_median_polished_eps0": eps0["s_part"]["c4_ratio_median"],
        "adam_task_accuracy_min": s["adam"]["task_accuracy_min"],
        "spearman": {k: v["rho"] for k, v in s["spearman"].items()},
        "wall_seconds": s["wall_seconds"],
    }, indent=1))
    print(f"wrote {out_dir}")
    return 0

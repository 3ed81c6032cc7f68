"""`python -m geomsim.testbed sweep`: the quartic law on a transformer, over a
sharpness x coupling grid, with its controls (see `geomsim.testbed.sweep.run`)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomsim import config as config_layer
from geomsim._runtime import enable_compilation_cache
from geomsim.config import ConfigError
from geomsim.plotting.formats import add_figures_flag, figure_formats
from geomsim.processes import ProcessLost, add_process_flags, current_group, report_error, start_processes
from geomsim.testbed.sweep.config import ARMS, TestbedSweepConfig
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


def _sweep_headline(result) -> dict:
    s = result.summary
    return {
        "lambda_spread": s["lambda_spread"], "gamma_spread": s["gamma_spread"],
        "s_part_exponent_median": {arm: s["arms"][arm]["s_part"]["exponent_median"] for arm in s["arms"]},
        "total_exponent_median": {arm: s["arms"][arm]["total"]["exponent_median"] for arm in s["arms"]},
        "c4_ratio_median_polished_eps0": s["arms"]["polished_eps0"]["s_part"]["c4_ratio_median"],
        "adam_task_accuracy_min": s["adam"]["task_accuracy_min"],
        "spearman": {k: v["rho"] for k, v in s["spearman"].items()},
        "wall_seconds": s["wall_seconds"],
    }


def _points(c) -> str:
    return f"{c.grid_shape[0]} x {c.grid_shape[1]} x {c.grid_shape[2]} points"


DEFENSE_HEADLINE = ("align_increase_median", "harm_rate_median", "task_accuracy_median",
                    "align_increase_fixed_median", "harm_rate_fixed_median", "task_accuracy_fixed_median",
                    "overhead_ratio")
FORECAST_HEADLINE = ("t_fail_ratio_median", "within_2x_fraction", "log10_error_median")


@dataclass(frozen=True)
class Subcommand:
    """One `python -m geomsim.testbed <name>` command on the sweep's models.

    config: its config class (`module:Class`) and run: its run function (`module:function`),
    both imported when the command runs (`--help` of another command imports neither);
    describe(config): the start line; headline(result): the JSON printed at the end;
    processes: the run splits over a group of processes (`geomsim.processes`)."""

    doc: str
    config: str
    run: str
    describe: Callable[[Any], str]
    headline: Callable[[Any], dict]
    processes: bool = True


SUBCOMMANDS = {
    "sweep": Subcommand(
        __doc__, "geomsim.testbed.sweep.config:TestbedSweepConfig", "geomsim.testbed.sweep.run:run_testbed_sweep",
        lambda c: (f"{c.grid_shape[0]} sharpness x {c.grid_shape[1]} coupling x {c.grid_shape[2]} seeds x "
                   f"{len(ARMS)} arms"), _sweep_headline),
    "defenses": Subcommand(
        "`python -m geomsim.testbed defenses`: every defense on the transformer, from the same polished models on "
        "the same batches (see `geomsim.testbed.sweep.defenses`).",
        "geomsim.testbed.sweep.defenses:TestbedDefenseConfig", "geomsim.testbed.sweep.defenses:run_testbed_defenses",
        lambda c: f"{', '.join(c.defenses)} on {_points(c)}",
        lambda s: {name: {k: d[k] for k in DEFENSE_HEADLINE if k in d} for name, d in s["defenses"].items()},
        processes=False),
    "forecast": Subcommand(
        "`python -m geomsim.testbed forecast`: every forecast of `Delta L_A` made at theta0, scored against "
        "measured gradient-descent fine-tunes of the transformer (see `geomsim.testbed.sweep.forecast`).",
        "geomsim.testbed.sweep.forecast:TestbedForecastConfig", "geomsim.testbed.sweep.forecast:run_testbed_forecast",
        lambda c: f"{_points(c)} x {len(c.arms)} arm(s), {c.gd_steps} GD steps each",
        lambda s: {name: {k: d[k] for k in FORECAST_HEADLINE} for name, d in s["methods"].items()}),
}


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None, command: str = "sweep") -> int:
    """`python -m geomsim.testbed <command>` (`SUBCOMMANDS`): parse, run, print the headline
    JSON; output under `runs/testbed-<command>-<timestamp>` by default."""
    sub = SUBCOMMANDS[command]
    cls, name, prog = _load(sub.config), f"testbed-{command}", f"{PROG.rsplit(' ', 1)[0]} {command}"
    parsed = parse(build_parser(prog, cls, sub.doc, f"runs/{name}-<timestamp>", sub.processes), cls, argv)
    if parsed is None:
        return 2
    config, out, figures, quiet, several = parsed
    out_dir = Path(out) if out else Path("runs") / time.strftime(f"{name}-%Y%m%d-%H%M%S")
    print(current_group().label(f"geomsim {name.replace('-', ' ')}: {sub.describe(config)} -> {out_dir}"),
          file=sys.stderr)
    result, status = run_split(prog, _load(sub.run), config, out_dir, figures, quiet, several)
    if result is None:
        return status
    print(json.dumps(sub.headline(result), indent=1))
    print(f"wrote {out_dir}")
    return 0

"""Command line of `python -m geomsim.diagnose` (one flag per setting; one-line errors)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from geomsim import config as config_layer
from geomsim._runtime import enable_compilation_cache
from geomsim.config import ConfigError
from geomsim.diagnose.config import DiagnoseConfig
from geomsim.finite import MeasurementError
from geomsim.plotting.formats import add_figures_flag, figure_formats
from geomsim.processes import ProcessLost, add_process_flags, current_group, report_error, start_processes
from geomsim.watchdog import Stalled, add_stall_flag

PROG = "python -m geomsim.diagnose"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Forecast alignment loss before fine-tuning: the "
                                     "AIC of a model and when each forecast crosses a threshold.")
    config_layer.add_flags(parser, DiagnoseConfig)
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file with any setting above; flags override it")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/diagnose-<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_figures_flag(parser)
    add_stall_flag(parser)
    add_process_flags(parser)
    args = vars(parser.parse_args(argv))
    file, out, quiet, figures = args.pop("config", None), args.pop("out", None), args.pop("quiet"), args.pop("figures")
    several = False
    try:
        several = start_processes(args)
        config = config_layer.build(DiagnoseConfig, file, args)
        import jax

        enable_compilation_cache()
        jax.config.update("jax_enable_x64", True)
        from geomsim.diagnose.run import diagnose

        out_dir = Path(out) if out else Path("runs") / time.strftime("diagnose-%Y%m%d-%H%M%S")
        with figure_formats(figures):
            report = diagnose(config, out_dir, quiet=quiet)
    except ConfigError as err:
        return report_error(PROG, err, 2, several)
    except MeasurementError as err:  # non-finite numbers or a zero task gradient: no verdict is written
        return report_error(PROG, err, 1, several)
    except ProcessLost as err:
        return report_error(PROG, err, 1, several)
    except Stalled as err:  # a stuck thread may be left: leave at once (True)
        return report_error(PROG, err, 1, True)
    if not current_group().leader:
        return 0
    print(json.dumps({"t_fail": report["t_fail"], "threshold": report["threshold"],
                      "wall_seconds": report["wall_seconds"]}, indent=1))
    print(f"wrote {out_dir}")
    return 0

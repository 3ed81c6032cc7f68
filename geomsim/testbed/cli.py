"""`python -m geomsim.testbed`: pretrain, align, and fine-tune a small transformer,
then test the theory's claims on it (see `geomsim.testbed.run`)."""

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
from geomsim.processes import report_error
from geomsim.testbed.config import TestbedConfig
from geomsim.testbed.sweep.cli import SUBCOMMANDS
from geomsim.testbed.sweep.cli import main as sweep_main
from geomsim.watchdog import Stalled, add_stall_flag

PROG = "python -m geomsim.testbed"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in SUBCOMMANDS:  # sweep, defenses, forecast: on the sweep's models
        return sweep_main(argv[1:], argv[0])
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.splitlines()[0],
        epilog="`python -m geomsim.testbed sweep --help`: the sharpness x coupling sweep (the quartic law on the "
               "transformer); `python -m geomsim.testbed defenses --help`: every defense side by side; "
               "`python -m geomsim.testbed forecast --help`: forecasts scored against measured fine-tunes")
    config_layer.add_flags(parser, TestbedConfig)
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file with any setting above; flags override it")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/testbed-<timestamp>); "
                        "checkpoints there are reused when their settings and the code match")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override a setting, e.g. --set seeds=2 (the same as --seeds 2)")
    parser.add_argument("--stop-after", choices=["pretrain", "align"],
                        help="train (or load) only up to this stage, e.g. to rerun one stage alone")
    add_figures_flag(parser)
    add_stall_flag(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    enable_compilation_cache()
    settings = {k: v for k, v in vars(args).items()
                if k not in ("config", "out", "set", "stop_after", "figures", "quiet")}
    try:
        for item in args.set:
            if "=" not in item:
                raise ConfigError(f"set: expected KEY=VALUE, got {item!r}")
            key, value = item.split("=", 1)
            settings[key.strip()] = value.strip()
        config = config_layer.build(TestbedConfig, args.config, settings)
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / time.strftime("testbed-%Y%m%d-%H%M%S")
    from geomsim.testbed.run import run_testbed

    try:
        with figure_formats(args.figures):
            result = run_testbed(config, out, progress=not args.quiet, plots=args.figures != "none",
                                 stop_after=args.stop_after)
    except Stalled as err:  # finished stages stay on disk; a stuck thread may be left: leave at once (True)
        return report_error(PROG, err, 1, True)
    if args.stop_after:
        print(f"stopped after {args.stop_after}; wrote {out}/checkpoints and {out}/stages.csv")
        return 0
    s = result.summary
    print(json.dumps({"harm_rate_after_alignment": s["stages"]["align"]["harm_rate"],
                      "rank90": [r["rank90"] for r in s["spectrum"]["per_seed"]],
                      "spearman_overlap": s["correlation"]["overlap"],
                      "spearman_taylor_forecast": s["correlation"]["taylor_forecast"],
                      "harm_rate_after_finetune": {t: v["mean"] for t, v in s["degradation"]["harm_rate"].items()},
                      "wall_seconds": s["wall_seconds"]}, indent=1))
    print(f"wrote {out}")
    return 0

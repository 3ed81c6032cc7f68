"""`python -m geomsim.sweep`: the quartic law across a sharpness x coupling grid.

With no arguments it runs the built-in default (16 x 16 grid, quadratic-cubic
landscape, gradient descent, float64) into `runs/<timestamp>/`.  Several processes
(one or many hosts) share one sweep through `--coordinator/--num-processes/--process-id`
or `--distributed` (`geomsim.processes`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from geomsim import config as config_layer
from geomsim._runtime import enable_compilation_cache
from geomsim.plotting.formats import add_figures_flag, figure_formats
from geomsim.processes import ProcessLost, add_process_flags, current_group, report_error, start_processes
from geomsim.sweep.config import ConfigError, SweepConfig, make_config
from geomsim.sweep.statistics import sweep_statistics
from geomsim.watchdog import Stalled, add_stall_flag

PROG = "python -m geomsim.sweep"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Sweep sharpness x coupling on an alignment landscape, fine-tune from the aligned "
            "point, and measure the onset law of the alignment loss (theory: Delta L_A ~ "
            "lambda gamma^2 t^4 / 8). Writes results.csv, curves.parquet, meta.json and figures."
        ),
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    config_layer.add_flags(parser, SweepConfig)
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file with any of the keys above; flags override it")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/<timestamp>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out, redoing no finished chunk")
    add_figures_flag(parser)
    add_stall_flag(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_process_flags(parser)
    return parser


def default_out_dir() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / stamp
    suffix = 1
    while out.exists():
        out = Path("runs") / f"{stamp}-{suffix}"
        suffix += 1
    return out


def _fmt(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{v:.3g}"


def summary(results, meta) -> str:
    """Short text summary: status counts, exponent and c4 ratio statistics, a small table."""
    ok = results["status"] == "ok"
    stats = sweep_statistics(results)
    lines = [f"runs: {stats['runs']}  " + "  ".join(f"{k}={v}" for k, v in meta["status_counts"].items() if v)]
    defended = meta["config"].get("defense", "none") != "none"
    if "exponent" in stats:
        e = stats["exponent"]
        expected = f"defense {meta['config']['defense']}: see docs/theory.md" if defended else "theory 4"
        lines.append(f"onset exponent: median {e['median']:.3f}  range [{e['min']:.3f}, {e['max']:.3f}]  ({expected})")
    if defended and "prefactor_ratio" in stats:
        r = stats["prefactor_ratio"]
        lines.append(f"prefactor / exact c_p of the defended flow: median {r['median']:.4f}  "
                     f"range [{r['min']:.4f}, {r['max']:.4f}]")
    if "c4_ratio" in stats and not defended:
        r = stats["c4_ratio"]
        lines.append(f"c4_fit / c4_pred: median {r['median']:.4f}  range [{r['min']:.4f}, {r['max']:.4f}]  (theory 1)")
    sharp, coup = np.unique(results["sharpness"]), np.unique(results["coupling"])
    si, ci = np.unique(np.linspace(0, len(sharp) - 1, min(4, len(sharp))).round().astype(int)), np.unique(
        np.linspace(0, len(coup) - 1, min(4, len(coup))).round().astype(int)
    )
    lines.append("exponent (rows: sharpness, columns: coupling)")
    lines.append("  lambda \\ gamma " + "".join(f"{_fmt(coup[j]):>10}" for j in ci))
    for i in si:
        cells = []
        for j in ci:
            mask = (results["sharpness"] == sharp[i]) & (results["coupling"] == coup[j])
            vals = results["exponent"][mask & ok]
            cells.append(f"{np.mean(vals):10.3f}" if vals.size else f"{'-':>10}")
        lines.append(f"  {_fmt(sharp[i]):>14} " + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    enable_compilation_cache()
    file = args.pop("config", None)
    out = args.pop("out", None)
    resume = args.pop("resume", False)
    figures = args.pop("figures")
    plots = figures != "none"
    quiet = args.pop("quiet", False)
    several = False
    try:
        several = start_processes(args)
        config = make_config(file, args)
        if resume and out is None:
            raise ConfigError("resume: needs --out DIR naming the sweep to continue")
        if several and out is None:
            raise ConfigError("out: several processes need --out DIR, one folder every process sees")
        out_dir = Path(out) if out is not None else default_out_dir()
        from geomsim.sweep.run import run_sweep

        group = current_group()
        print(group.label(f"geomsim sweep: {config.n_points} runs ({len(config.sharpness)} sharpness x "
                          f"{len(config.coupling)} coupling x {config.seeds} seeds), optimizer {config.optimizer}, "
                          f"{config.steps} steps of lr {config.lr:g} -> {out_dir}"), file=sys.stderr)
        with figure_formats(figures):
            result = run_sweep(config, out_dir, resume=resume, progress=not quiet, plots=plots)
    except ConfigError as err:
        return report_error(PROG, err, 2, several)
    except ProcessLost as err:
        return report_error(PROG, err, 1, several)
    except Stalled as err:  # chunks on disk stay; a stuck thread may be left: leave at once (True)
        return report_error(PROG, err, 1, True)
    if result is None:  # another process merges and reports
        return 0
    print(summary(result.results, result.meta))
    print(f"wrote {out_dir}/results.csv, curves.parquet, meta.json" + (", figures" if plots else "")
          + f" in {result.meta['wall_seconds']:.1f} s")
    return 0

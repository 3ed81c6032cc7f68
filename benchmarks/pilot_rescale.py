"""What a short real fine-tune buys over the zero-step forecast (issue 19, item 3), at
several pilot lengths, on the testbed forecast validation's own curves.

    python benchmarks/pilot_rescale.py [--out runs/paper_repro/forecast] [--fractions 0.05,0.2]

Needs a finished `python -m paper_repro --only forecast` (its forecast_runs.csv and
forecast_curves.csv in --out). The pilot is the one `python -m geomsim.diagnose
--pilot-steps N` runs and the validation scores at 5% (`geomsim.testbed.sweep.forecast.
pilot_scores`: N = fraction x the forecast's crossing step, the measured `Delta L_A(N)`
read off the recorded curve, the forecast rescaled by measured / forecast at N, or the
measured crossing where the pilot already crossed); here at each of `--fractions`.
Per method: within 2x and late by more than 2x (forecast / measured crossing, over every
run and level the measurement reached), before and after, and the pilot's length as a
fraction of the *measured* crossing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from geomsim.io import loads_strict, read_table  # noqa: E402
from geomsim.testbed.sweep.forecast import pilot_scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "paper_repro" / "forecast"))
    parser.add_argument("--fractions", default="0.05,0.2")
    args = parser.parse_args(argv)
    runs = read_table(Path(args.out) / "forecast_runs.csv")
    curves = read_table(Path(args.out) / "forecast_curves.csv")
    config = loads_strict((Path(args.out) / "summary.json").read_text())["config"]
    for fraction in (float(f) for f in args.fractions.split(",")):
        print(f"pilot of {fraction:g} x the forecast's crossing step")
        for method, entry in pilot_scores(runs, curves, tuple(config["levels"]), config["threshold"],
                                          fraction).items():
            per = [d for d in entry["levels"].values() if d["runs"]]
            count = sum(d["runs"] for d in per)

            def pooled(key, per=per, count=count):
                return sum(d[key] * d["runs"] for d in per) / count if count else float("nan")

            spent = [d["pilot_steps_over_measured_median"] for d in per
                     if d["pilot_steps_over_measured_median"] is not None]
            print(f"  {method:16s} {count:3d} crossings: within 2x {pooled('zero_step_within_2x_fraction'):.0%} -> "
                  f"{pooled('within_2x_fraction'):.0%}, late by >2x {pooled('zero_step_late_2x_fraction'):.0%} -> "
                  f"{pooled('late_2x_fraction'):.0%}; pilot = {np.median(spent) if spent else float('nan'):.3f} of "
                  "the measured crossing (median of the levels' medians)")


if __name__ == "__main__":
    main()

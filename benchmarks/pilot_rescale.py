"""What a short real fine-tune buys over the zero-step forecast (issue 19, item 3), measured
on the testbed forecast validation's own curves before building `--pilot-steps`.

    python benchmarks/pilot_rescale.py [--out runs/paper_repro/forecast] [--fractions 0.05,0.2]

Needs a finished `python -m paper_repro --only forecast` (its forecast_runs.csv and
forecast_curves.csv in --out). The pilot studied is the simplest one a team can afford:
run `n = max(1, fraction x the forecast's crossing step)` real steps, read the measured
`Delta L_A(n)`, and rescale the forecast curve by `measured(n) / forecast(n)`; a pilot that
already crossed the level reports the measured crossing. The measured value at n is read
off the recorded curve (30 log-spaced steps; log-log interpolation), the same steps the
fine-tune took, so the pilot costs nothing here but is exactly what a real one would see.
Per method and fraction: within 2x and late by more than 2x (forecast / measured crossing,
over every run and level the measurement reached), before and after, and the pilot's
length as a fraction of the *measured* crossing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from geomsim.io import read_table  # noqa: E402
from geomsim.testbed.sweep.forecast import ADAM_METHODS, GD_METHODS  # noqa: E402
from geomsim.theory.laws import first_crossing  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1e-3, 1e-2, 1e-1)


def loglog(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """A positive recorded curve at x (log-log interpolation; t^2 below its first point)."""
    ok = ys > 0
    if x <= xs[0]:
        return float(ys[0] * (x / xs[0]) ** 2)
    return float(np.exp(np.interp(np.log(x), np.log(xs[ok]), np.log(ys[ok]))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "paper_repro" / "forecast"))
    parser.add_argument("--fractions", default="0.05,0.2")
    args = parser.parse_args(argv)
    runs = read_table(Path(args.out) / "forecast_runs.csv")
    curves = read_table(Path(args.out) / "forecast_curves.csv")
    for fraction in (float(f) for f in args.fractions.split(",")):
        print(f"pilot of {fraction:g} x the forecast's crossing step")
        for measured_name, methods in (("measured", GD_METHODS), ("adam_measured", ADAM_METHODS)):
            for method in methods:
                before, after, spent = [], [], []
                for i in range(len(runs["run"])):
                    mine = curves["run"] == i
                    m_sel, f_sel = mine & (curves["curve"] == measured_name), mine & (curves["curve"] == method)
                    xs, ys = curves["step"][m_sel], curves["align_increase"][m_sel]
                    fx, fy = curves["step"][f_sel], curves["align_increase"][f_sel]
                    for level in LEVELS:
                        t_meas = float(first_crossing(xs, ys, level))
                        if not np.isfinite(t_meas):
                            continue
                        t_fcst = float(first_crossing(fx, fy, level))
                        before.append(t_fcst / t_meas)
                        if not np.isfinite(t_fcst):
                            after.append(np.inf)
                            continue
                        n = max(1, int(fraction * t_fcst))
                        spent.append(n / t_meas)
                        at_n = loglog(n, xs, ys)
                        if at_n >= level:  # the pilot itself crossed
                            after.append(1.0)
                            continue
                        f_n = loglog(n, fx, fy)
                        scale = at_n / f_n if f_n > 0 else 1.0
                        after.append(float(first_crossing(fx, scale * fy, level)) / t_meas)
                before, after = np.asarray(before), np.asarray(after)

                def within(r):
                    return np.mean((r >= 0.5) & (r <= 2.0))

                print(f"  {method:16s} {before.size:3d} crossings: within 2x {within(before):.0%} -> "
                      f"{within(after):.0%}, late by >2x {np.mean(before > 2):.0%} -> {np.mean(after > 2):.0%}; "
                      f"pilot = {np.median(spent):.3f} of the measured crossing (median)")


if __name__ == "__main__":
    main()

"""The split-conformal interval on the time to failure (geomsim.theory.calibration)."""

import math

import numpy as np
import pytest

from geomsim.theory.calibration import Calibration, calibrate, evaluate, score_bounds


def test_bounds_are_the_order_statistics_the_formula_names():
    scores = np.array([0.3, -0.2, 0.1, 0.5, -0.4, 0.0, 0.2, -0.1, 0.4, 0.6,
                       -0.3, 0.7, 0.05, 0.15, -0.05, 0.25, 0.35, 0.45, 0.55])  # n = 19
    t_fcst = np.full(19, 100.0)
    cal = calibrate(t_fcst * 10.0**scores, t_fcst, np.full(19, 1e6), alpha=0.05)
    # floor(0.05 * 20) = 1st smallest, ceil(0.95 * 20) = 19th smallest
    assert cal.low == pytest.approx(-0.4) and cal.high == pytest.approx(0.7)
    assert (cal.runs, cal.censored, cal.missed) == (19, 0, 0)
    cal = calibrate(t_fcst * 10.0**scores, t_fcst, np.full(19, 1e6), alpha=0.1)
    # floor(0.1 * 20) = 2nd smallest, ceil(0.9 * 20) = 18th smallest
    assert cal.low == pytest.approx(-0.3) and cal.high == pytest.approx(0.6)


def test_too_few_runs_give_no_bound_rather_than_a_wrong_one():
    t = np.full(10, 5.0)
    cal = calibrate(t, t, np.full(10, 50.0), alpha=0.05)  # floor(0.05 * 11) = 0
    assert cal.low == -math.inf and cal.high == math.inf
    assert cal.interval(3.0) == (0.0, math.inf)


def test_censored_and_missed_runs_are_conservative():
    t_fcst = np.array([10.0, 10.0, np.inf, 10.0])
    t_meas = np.array([20.0, np.inf, 5.0, 10.0])
    s_lo, s_hi, used = score_bounds(t_meas, t_fcst, np.array([100.0, 40.0, 100.0, 100.0]))
    assert used.tolist() == [True, True, False, True]
    assert s_lo[1] == pytest.approx(math.log10(4.0)) and s_hi[1] == math.inf  # only known to be >= log10(40/10)
    assert s_lo[0] == s_hi[0] == pytest.approx(math.log10(2.0))
    cal = calibrate(np.tile(t_meas, 10), np.tile(t_fcst, 10), np.tile([100.0, 40.0, 100.0, 100.0], 10), alpha=0.05)
    assert (cal.runs, cal.censored, cal.missed) == (30, 10, 10)
    assert cal.low == pytest.approx(0.0) and cal.high == math.inf  # the censored runs' upper ends


def test_coverage_on_fresh_runs_is_what_the_guarantee_says():
    rng = np.random.default_rng(0)

    def runs(n):  # forecasts late by 2x on average with a log-normal error; a finite measured horizon
        t_fcst = 10.0 ** rng.uniform(1, 3, n)
        t_meas = t_fcst * 10.0 ** rng.normal(-0.3, 0.4, n)
        end = np.full(n, 3000.0)
        return np.where(t_meas <= end, t_meas, np.inf), t_fcst, end

    cal = calibrate(*runs(400), alpha=0.05)
    assert cal.low == pytest.approx(-0.3 - 1.645 * 0.4, abs=0.1)
    check = evaluate(cal, *runs(20000))
    assert 0.87 <= check["coverage"] <= 0.95  # >= 1 - 2 alpha, up to censoring and sampling
    assert check["late_2x"] <= 0.05
    # Negative control: the uncalibrated point forecast is often off by more than 2x, and an
    # interval calibrated on forecasts that were early is late on these.
    assert check["point_within_2x"] < 0.7
    wrong = Calibration(0.0, 0.5, 0.05, 400, 0, 0)
    assert evaluate(wrong, *runs(20000))["late_2x"] > 0.2


def test_round_trip_through_strict_json():
    cal = Calibration(-math.inf, 0.4, 0.05, 12, 3, 1, math.inf)
    data = cal.to_dict()
    assert data["low"] is None and data["high"] == 0.4 and data["median_early"] is None
    assert Calibration.from_dict(data) == cal
    with pytest.raises(ValueError, match="alpha"):
        calibrate([1.0], [1.0], [2.0], alpha=0.6)

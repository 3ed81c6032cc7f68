"""An interval on the time to failure that errs early: split-conformal calibration of a
forecast's crossing time against measured fine-tunes.

A forecast method says the alignment loss reaches tau at `t_fcst`; a measured fine-tune
reaches it at `t_meas`. The method's error on a run is the score
`s = log10(t_meas / t_fcst)` (s < 0: the forecast was late, the unsafe side). Over n
calibration runs, the split-conformal bounds (Vovk et al.; Lei et al. 2018) are

    low  = the floor(alpha (n + 1))-th smallest score   (-inf when that is 0),
    high = the ceil((1 - alpha) (n + 1))-th smallest    (+inf when that exceeds n),

and for a new run exchangeable with them `t_fcst 10^low <= t_meas <= t_fcst 10^high`
holds with probability >= 1 - 2 alpha; the lower end alone fails with probability
<= alpha, so a verdict that takes it is late by more than 2x in at most alpha of runs.

Censoring. A run's measurement ends at `meas_end`; if the measured curve never reached
tau, its score is only known to be `>= log10(meas_end / t_fcst)`. The lower bound is
calibrated on the runs whose measurement reached tau: lateness matters only when the
fine-tune does fail, and a censored run can only make a forecast look early (leaving it
out errs early). Measured on the testbed (experiments/forecast.toml), pooling the
censored runs' lower bounds in instead left the early end late by more than 2x in 8-27%
of the reaching runs. The upper bound takes every run whose forecast crossed, a censored
one as +inf, so it is finite only when fewer than alpha of them never reached tau. Runs
whose forecast never crossed within its horizon are not calibration runs of a crossing
forecast (a verdict with a crossing is what the bounds serve); those where the
measurement crossed anyway are counted as `missed` and reported beside the bounds.

Levels. A method's error depends on the threshold (on the testbed the quadratic models
are early at 1e-1 nats and late at 1e-3), so pooling thresholds mixes populations: measured
there, a pooled calibration of the Gauss-Newton forecast covered 95% of the held-out seeds'
crossings at 1e-3 and 48% at 1e-2. `calibrate_levels` calibrates each measured level on its
own; a level with too few reaching runs for a bound (fewer than 1/alpha - 1) takes the
lowest bound of the pooled runs and of the other levels (the early side), marked as a
fallback; a threshold between levels uses the nearest one in log10.

Everything here is host-side statistics of finished runs (numpy), not an algorithm on
device.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

ALPHA = 0.05  # each tail: a 90% interval whose lower end is late in at most 5% of runs


class Calibration(NamedTuple):
    """Split-conformal bounds of one forecast method's crossing time.

    low, high: log10 factors; the interval of a forecast crossing t is
        `[t 10^low, t 10^high]` (low = -inf: no lower bound but 0; high = inf: none).
    alpha: miscoverage of each end.
    runs: calibration runs whose forecast crossed; censored: of those, the runs whose
        measurement never reached the threshold (`runs - censored` calibrate `low`).
    missed: runs whose measurement crossed but whose forecast did not (not in `runs`).
    median_early: over the runs that calibrate `low`, the median of `log10(t_meas / t_low)`:
        how many decades before the measured crossing the early end typically falls (how
        tight the verdict is; inf without a lower bound).
    """

    low: float
    high: float
    alpha: float
    runs: int
    censored: int
    missed: int
    median_early: float = math.nan

    def interval(self, t_fail: float) -> tuple[float, float]:
        """`(t_fail 10^low, t_fail 10^high)`; a forecast that never crosses stays `(inf, inf)`."""
        if not math.isfinite(t_fail):
            return math.inf, math.inf
        return t_fail * 10.0**self.low, t_fail * 10.0**self.high

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON dict (infinite ends as null)."""
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in self._asdict().items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of `to_dict` (a null low is -inf, a null high +inf)."""
        low = -math.inf if data["low"] is None else float(data["low"])
        high = math.inf if data["high"] is None else float(data["high"])
        early = math.inf if data.get("median_early", 0.0) is None else float(data.get("median_early", math.nan))
        return cls(low, high, float(data["alpha"]), int(data["runs"]), int(data["censored"]), int(data["missed"]),
                   early)


def score_bounds(t_meas, t_fcst, meas_end) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(s_lo, s_hi, used)` per run: the interval of possible `log10(t_meas / t_fcst)` and
    whether the run calibrates a crossing forecast (its forecast crossed).

    t_meas: measured crossing times (inf: never within `meas_end`); t_fcst: the forecast's
    (inf: never within its horizon); meas_end: the last measured time of each run. Any
    consistent unit (steps at the run's lr, or t = steps x lr).
    """
    t_meas, t_fcst, meas_end = (np.asarray(x, dtype=float) for x in (t_meas, t_fcst, meas_end))
    used = np.isfinite(t_fcst) & (t_fcst > 0)
    safe_fcst = np.where(used, t_fcst, 1.0)
    reached = np.isfinite(t_meas)
    point = np.log10(np.where(reached, t_meas, 1.0) / safe_fcst)
    censored_low = np.log10(meas_end / safe_fcst)
    s_lo = np.where(reached, point, censored_low)
    s_hi = np.where(reached, point, np.inf)
    return s_lo, s_hi, used


def calibrate(t_meas, t_fcst, meas_end, alpha: float = ALPHA) -> Calibration:
    """`Calibration` of one method from measured runs (see the module docstring)."""
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha: must be in (0, 0.5) (got {alpha})")
    s_lo, s_hi, used = score_bounds(t_meas, t_fcst, meas_end)
    reached = np.isfinite(np.asarray(t_meas, dtype=float))
    low = _order_statistic(s_lo[used & reached], alpha, lower=True)
    high = _order_statistic(s_hi[used], alpha, lower=False)
    points = s_lo[used & reached]
    early = float(np.median(points - low)) if points.size and math.isfinite(low) else math.inf
    return Calibration(low, high, alpha, int(used.sum()), int((used & ~reached).sum()),
                       int((~used & reached).sum()), early)


def _order_statistic(scores: np.ndarray, alpha: float, *, lower: bool) -> float:
    """The split-conformal bound of n scores: the floor(alpha (n+1))-th smallest (lower;
    -inf when that is 0) or the ceil((1-alpha)(n+1))-th smallest (upper; inf past n)."""
    n = scores.size
    if lower:
        k = math.floor(alpha * (n + 1))
        return float(np.sort(scores)[k - 1]) if k >= 1 else -math.inf
    k = math.ceil((1.0 - alpha) * (n + 1))
    return float(np.sort(scores)[k - 1]) if k <= n else math.inf


def evaluate(calibration: Calibration, t_meas, t_fcst, meas_end) -> dict[str, Any]:
    """How the calibrated interval does on runs it was not fitted on.

    Over the runs whose measurement reached the threshold: `coverage` (the interval holds
    the measured time; a forecast that never crossed does not cover), `late_2x` (the lower
    end, the verdict, is more than 2x after the measured time; a forecast that never
    crossed counts as late), `point_within_2x` (the uncalibrated forecast within 2x), and
    `median_width` (high / low, over finite intervals). Censored runs (never reached)
    cannot be late; they count as covered when the interval reaches past `meas_end`.
    """
    t_meas, t_fcst, meas_end = (np.asarray(x, dtype=float) for x in (t_meas, t_fcst, meas_end))
    lows = np.array([calibration.interval(t)[0] for t in t_fcst])
    highs = np.array([calibration.interval(t)[1] for t in t_fcst])
    reached = np.isfinite(t_meas)
    r = reached
    covered = (lows[r] <= t_meas[r]) & (t_meas[r] <= highs[r])
    ratio = t_fcst[r] / t_meas[r]
    with np.errstate(divide="ignore", invalid="ignore"):
        widths = highs / lows
    widths = widths[np.isfinite(widths)]
    return {
        "runs": int(r.sum()),
        "censored_runs": int((~r).sum()),
        "coverage": float(covered.mean()) if r.any() else None,
        "late": float(np.mean(lows[r] > t_meas[r])) if r.any() else None,
        "late_2x": float(np.mean(lows[r] > 2.0 * t_meas[r])) if r.any() else None,
        "point_within_2x": float(np.mean((ratio >= 0.5) & (ratio <= 2.0))) if r.any() else None,
        "censored_covered": float(np.mean(highs[~r] >= meas_end[~r])) if (~r).any() else None,
        "median_width": float(np.median(widths)) if widths.size else None,
    }


class LevelCalibrations(NamedTuple):
    """One method's `Calibration` per measured threshold (nats), increasing; `fallback[i]`:
    level i had too few reaching runs and carries the conservative pooled bound."""

    levels: tuple[float, ...]
    calibrations: tuple[Calibration, ...]
    fallback: tuple[bool, ...]

    def at(self, threshold: float) -> tuple[float, Calibration, bool]:
        """`(level, calibration, fallback)` of the measured level nearest `threshold` in log10
        (of two equally near, the one with the lower bound)."""
        distance = [abs(math.log10(threshold / lv)) for lv in self.levels]
        nearest = min(distance)
        picks = [i for i, d in enumerate(distance) if d <= nearest + 1e-12]
        i = min(picks, key=lambda j: self.calibrations[j].low)
        return self.levels[i], self.calibrations[i], self.fallback[i]

    def to_dict(self) -> dict[str, Any]:
        return {f"{lv:g}": {**cal.to_dict(), "fallback": fb}
                for lv, cal, fb in zip(self.levels, self.calibrations, self.fallback, strict=True)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LevelCalibrations:
        items = sorted(data.items(), key=lambda kv: float(kv[0]))
        return cls(tuple(float(k) for k, _ in items), tuple(Calibration.from_dict(v) for _, v in items),
                   tuple(bool(v.get("fallback", False)) for _, v in items))


def calibrate_levels(t_meas, t_fcst, meas_end, level, alpha: float = ALPHA) -> LevelCalibrations:
    """`calibrate` at each distinct `level` (the threshold of each row), with the
    conservative fallback for levels too thin for a bound (module docstring)."""
    t_meas, t_fcst, meas_end, level = (np.asarray(x, dtype=float) for x in (t_meas, t_fcst, meas_end, level))
    levels = tuple(float(lv) for lv in np.unique(level))
    per = [calibrate(t_meas[level == lv], t_fcst[level == lv], meas_end[level == lv], alpha) for lv in levels]
    pooled = calibrate(t_meas, t_fcst, meas_end, alpha)
    floor = min([pooled.low] + [c.low for c in per if math.isfinite(c.low)])
    fallback = tuple(not math.isfinite(c.low) for c in per)
    per = [c._replace(low=floor, median_early=math.nan) if fb else c for c, fb in zip(per, fallback, strict=True)]
    return LevelCalibrations(levels, tuple(per), fallback)


def evaluate_levels(calibrations: LevelCalibrations, t_meas, t_fcst, meas_end, level) -> dict[str, Any]:
    """`evaluate` of each row with its level's calibration: pooled over the levels, and per level."""
    t_meas, t_fcst, meas_end, level = (np.asarray(x, dtype=float) for x in (t_meas, t_fcst, meas_end, level))
    rows = {}
    for lv in np.unique(level):
        cal = calibrations.at(float(lv))[1]
        keep = level == lv
        rows[f"{lv:g}"] = evaluate(cal, t_meas[keep], t_fcst[keep], meas_end[keep])
    return {**combine(list(rows.values())), "levels": rows}


def combine(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`evaluate` results of disjoint sets of runs as one: run-weighted fractions (the
    median of the parts' median widths)."""
    def mean(key, weight):
        pairs = [(r[key], r[weight]) for r in rows if r[key] is not None and r[weight]]
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else None

    widths = [r["median_width"] for r in rows if r["median_width"] is not None]
    return {"runs": sum(r["runs"] for r in rows), "censored_runs": sum(r["censored_runs"] for r in rows),
            "coverage": mean("coverage", "runs"), "late": mean("late", "runs"), "late_2x": mean("late_2x", "runs"),
            "point_within_2x": mean("point_within_2x", "runs"),
            "censored_covered": mean("censored_covered", "censored_runs"),
            "median_width": float(np.median(widths)) if widths else None}


def verdict_ends(base_low: dict[str, Any], base_high: dict[str, Any], calibrations: dict[str, LevelCalibrations],
                 level) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The verdict's interval over several calibrated methods: `(low, high, binding)`, the
    earliest calibrated lower end, the latest upper end, and the index (into the sorted
    method names) of the method whose lower end binds; per row.

    base_low / base_high: per method the forecast crossing (or its resamples' 5% / 95%
    quantiles), inf where it never crosses; level: each row's threshold (its nearest
    measured level's calibration applies).
    """
    names = sorted(base_low)
    level = np.atleast_1d(np.asarray(level, dtype=float))
    lows, highs = [], []
    for name in names:
        cals = [calibrations[name].at(float(lv))[1] for lv in level]
        lo = np.atleast_1d(np.asarray(base_low[name], dtype=float))
        hi = np.atleast_1d(np.asarray(base_high[name], dtype=float))
        lows.append(np.array([c.interval(t)[0] for c, t in zip(cals, lo, strict=True)]))
        highs.append(np.array([c.interval(t)[1] for c, t in zip(cals, hi, strict=True)]))
    lows, highs = np.stack(lows), np.stack(highs)
    return lows.min(axis=0), highs.max(axis=0), lows.argmin(axis=0)


def score_verdict(low, high, t_meas, meas_end, level) -> dict[str, Any]:
    """How a verdict's interval did on measured runs, pooled and per level: over the runs
    that reached the threshold, `late` / `late_2x` (the early end after the measured
    crossing, by more than 2x), `coverage`, and `median_early` (decades from the early end
    to the measured crossing: how much earlier than needed the verdict speaks)."""
    low, high, t_meas, meas_end, level = (np.asarray(x, dtype=float) for x in (low, high, t_meas, meas_end, level))

    def one(keep):
        r = keep & np.isfinite(t_meas)
        with np.errstate(divide="ignore"):  # an early end at t = 0 (before the first step): no decades, left out
            early = np.log10(t_meas[r] / low[r])
        early = early[np.isfinite(early)]
        return {"runs": int(r.sum()), "censored_runs": int((keep & ~np.isfinite(t_meas)).sum()),
                "late": float(np.mean(low[r] > t_meas[r])) if r.any() else None,
                "late_2x": float(np.mean(low[r] > 2.0 * t_meas[r])) if r.any() else None,
                "coverage": float(np.mean((low[r] <= t_meas[r]) & (t_meas[r] <= high[r]))) if r.any() else None,
                "median_early": float(np.median(early)) if early.size else None}

    return {**one(np.ones(level.shape, dtype=bool)), "levels": {f"{lv:g}": one(level == lv) for lv in np.unique(level)}}

"""The sweep's numbers: fits per run, then what held and what did not.

Per run (`fit_runs`): onset fits (`geomsim.fitting.fit_onset`, no expected
exponent) of the S-part and of `|Delta L_A|`, each with the ratio of the fitted
prefactor to the predicted coefficient of the fitted power (S-part: c2_s for
t^2, c4_s for t^4; total: the exact Taylor c_p); the measured crossover
(the first recorded time where the local log-log slope of `|Delta L_A|` reaches
3, the midpoint between a t^2 and a t^4 regime) against `sqrt(c2 / c4)` and
against the same slope-3 time of the Taylor polynomial c1..c4 itself; the
time where `|c1| t = c4_s t^4`; and whether `Delta L_A >= S-part` (the
theorem's projection bound) at every recorded time.

Over the grid (`summarise`): per arm and quantity the exponent median and IQR,
prefactor ratios, the fraction of runs with a fitted window; the measured
spreads of lambda and gamma; the Adam arm at the accuracy target and at the
fixed step; Spearman correlations of the pre-fine-tuning diagnostics with the
damage, with seed-bootstrap CIs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from geomsim.finite import run_reasons
from geomsim.fitting import FIT_OK, FIT_REASONS, fit_onset, local_slopes
from geomsim.testbed.summary import spearman_with_ci
from geomsim.testbed.sweep.config import ARMS, TestbedSweepConfig

# Round-off floor of |Delta L_A| (nats): the calibrated loss is a difference of O(1)
# log-probabilities, so its increase is resolved to ~eps_machine in absolute terms.
FLOOR_ULPS = 256.0
CROSSOVER_SLOPE = 3.0
DIAGNOSTICS = ("overlap", "eps", "coupling", "coupling_fisher", "lambda_gamma2", "taylor_forecast")


def _fit(t, y, floor, config):
    return jax.vmap(lambda a, b: fit_onset(a, b, floor, slope_tol=config.slope_tol, min_decades=config.min_decades))(
        jnp.asarray(t), jnp.asarray(y))


def _predicted(power: np.ndarray, table: dict[int, np.ndarray]) -> np.ndarray:
    out = np.full(power.shape, np.nan)
    for p, values in table.items():
        out = np.where(power == p, np.abs(values), out)
    return out


def crossover_measured(t: np.ndarray, slopes: np.ndarray, level: float = CROSSOVER_SLOPE) -> np.ndarray:
    """Per row: first time the local slope rises through `level` (log-interpolated); nan if never."""
    out = np.full(t.shape[0], np.nan)
    for i in range(t.shape[0]):
        s = slopes[i]
        ok = np.isfinite(s)
        idx = np.flatnonzero(ok)
        below = idx[s[idx] < level]
        if not below.size:
            continue
        after = idx[(idx > below[0]) & (s[idx] >= level)]
        if not after.size:
            continue
        j = after[0]
        k = idx[idx < j][-1]
        frac = (level - s[k]) / (s[j] - s[k])
        out[i] = float(np.exp(np.log(t[i, k]) + frac * (np.log(t[i, j]) - np.log(t[i, k]))))
    return out


def _taylor_crossover(law_out: dict[str, np.ndarray], t: np.ndarray) -> np.ndarray:
    """Where the local slope of the Taylor polynomial c1 t + .. + c4 t^4 itself passes 3
    (c3 included), on a fine log grid over each run's recorded range; nan if it never does."""
    grid = np.geomspace(t[:, :1], t[:, -1:], 400, axis=1)[..., 0]
    c = np.stack([law_out[f"c{p}"] for p in (1, 2, 3, 4)], axis=1)[:, :, None]
    powers = np.arange(1, 5)[None, :, None]
    value = np.sum(c * grid[:, None, :] ** powers, axis=1)
    slope = np.sum(powers * c * grid[:, None, :] ** powers, axis=1) / np.where(value != 0, value, np.nan)
    return crossover_measured(grid, slope)


def fit_runs(law_out: dict[str, np.ndarray], config: TestbedSweepConfig) -> dict[str, np.ndarray]:
    """Per-run fits and derived times (see the module docstring)."""
    t, total, sp = law_out["time"], law_out["align_increase"], law_out["s_part"]
    floor = FLOOR_ULPS * np.finfo(np.float64).eps
    fs = jax.tree.map(np.asarray, _fit(t, sp, 0.0, config))
    ft = jax.tree.map(np.asarray, _fit(t, np.abs(total), floor, config))
    c = {p: law_out[f"c{p}"] for p in (1, 2, 3, 4)}
    out: dict[str, np.ndarray] = {}
    for name, fit, pred in (("s", fs, {2: law_out["c2_s"], 4: law_out["c4_s"]}), ("total", ft, c)):
        ok = fit.status == FIT_OK
        out[f"{name}_exponent"] = fit.exponent
        out[f"{name}_exponent_lo"] = fit.exponent_lo
        out[f"{name}_exponent_hi"] = fit.exponent_hi
        out[f"{name}_power"] = np.where(ok, fit.power, -1)
        out[f"{name}_prefactor"] = fit.prefactor
        out[f"{name}_prefactor_pred"] = _predicted(fit.power, pred)
        out[f"{name}_prefactor_ratio"] = fit.prefactor / out[f"{name}_prefactor_pred"]
        out[f"{name}_window_lo"] = fit.window_lo
        out[f"{name}_window_hi"] = fit.window_hi
        out[f"{name}_fit_ok"] = ok
    slopes = np.asarray(jax.vmap(lambda a, b: local_slopes(a, b, floor))(jnp.asarray(t), jnp.asarray(np.abs(total))))
    c2, c4 = law_out["c2"], law_out["c4"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["crossover_pred"] = np.where((c2 > 0) & (c4 > 0), np.sqrt(c2 / c4), np.nan)
        out["crossover_pred_s"] = np.where((c2 > 0) & (law_out["c4_s"] > 0), np.sqrt(c2 / law_out["c4_s"]), np.nan)
        out["crossover_meas"] = crossover_measured(t, slopes)
        out["crossover_ratio"] = out["crossover_meas"] / out["crossover_pred"]
        out["crossover_pred_taylor"] = _taylor_crossover(law_out, t)
        out["crossover_ratio_taylor"] = out["crossover_meas"] / out["crossover_pred_taylor"]
        out["t_c1"] = np.where(law_out["c4_s"] > 0, (np.abs(law_out["c1"]) / law_out["c4_s"]) ** (1 / 3), np.nan)
    out["window_end"] = 1.0 / law_out["task_sharpness"]
    margin = total - sp + floor
    inside = t <= out["window_end"][:, None]
    out["lower_bound_holds"] = np.all(margin >= 0, axis=1)
    out["lower_bound_holds_window"] = np.all((margin >= 0) | ~inside, axis=1)
    out["finite"] = np.all(np.isfinite(total) & np.isfinite(sp), axis=1)
    out["status"], out["reason"] = run_status(law_out, fs.status)
    return out


# What a run's verdict rests on: its curves and its measured coefficients (MEASURED_FIELDS order
# decides which quantity a reason names when several are non-finite).
MEASURED_FIELDS = ("align_increase", "s_part", "task_loss", "c1", "c2", "c3", "c4", "c2_s", "c4_s", "task_sharpness")


def run_status(law_out: dict[str, np.ndarray], fit_status: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per run: "nan" with the first non-finite measured quantity, else "no_onset" with the
    S-part fit's reason, else "ok" (the sweep's statuses, geomsim.sweep.run)."""
    bad = run_reasons({name: law_out[name] for name in MEASURED_FIELDS})
    fit_status = np.asarray(fit_status)
    fit_reason = np.array([FIT_REASONS[int(code)] for code in fit_status], dtype=object)
    status = np.where(bad != "", "nan", np.where(fit_status == FIT_OK, "ok", "no_onset")).astype(object)
    return status, np.where(bad != "", bad, fit_reason).astype(object)


def _none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _stats(rows: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    ok = rows[f"{prefix}_fit_ok"].astype(bool) & rows["finite"].astype(bool)
    e = rows[f"{prefix}_exponent"][ok]
    power = rows[f"{prefix}_power"][ok]
    ratio = rows[f"{prefix}_prefactor_ratio"][ok]
    ratio4 = ratio[(power == 4) & np.isfinite(ratio)]
    finite_ratio = ratio[np.isfinite(ratio)]
    return {
        "exponent_median": _none(np.median(e)) if e.size else None,
        "exponent_iqr": [float(v) for v in np.percentile(e, [25, 75])] if e.size else None,
        "c4_ratio_median": _none(np.median(ratio4)) if ratio4.size else None,
        "prefactor_ratio_median": _none(np.median(finite_ratio)) if finite_ratio.size else None,
        "ok_fraction": float(np.mean(ok)),
        "powers": {str(int(p)): int(np.sum(power == p)) for p in np.unique(power)},
        "n_runs": int(ok.size),
    }


def _rows(table: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in table.items()}


def adam_points(config: TestbedSweepConfig, adam: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per point: the first recorded step at the accuracy target and the values there and at the last step."""
    n = int(adam["point"].max()) + 1
    m = adam["point"].size // n
    acc = adam["task_accuracy"].reshape(n, m)
    reached = acc >= config.accuracy_target
    first = np.where(reached.any(axis=1), np.argmax(reached, axis=1), m - 1)
    out = {"reached": reached.any(axis=1), "best_accuracy": acc.max(axis=1),
           "steps_to_target": np.where(reached.any(axis=1), adam["steps"].reshape(n, m)[np.arange(n), first], np.nan)}
    for key in ("align_increase", "harm_rate", "s_part", "task_accuracy"):
        v = adam[key].reshape(n, m)
        out[f"{key}_at_target"] = v[np.arange(n), first]
        out[f"{key}_at_fixed"] = v[:, -1]
    return out


def summarise(config: TestbedSweepConfig, tables: dict[str, dict[str, np.ndarray]], spec: dict[str, np.ndarray]
              ) -> dict[str, Any]:
    levels, mixes, seeds = config.grid_shape
    runs, models = tables["runs"], tables["models"]
    out: dict[str, Any] = {
        "grid": {"sharpness_levels": list(config.refusal_sigma), "coupling_levels": list(config.mix),
                 "seeds": seeds, "arms": list(ARMS), "runs": int(runs["run"].size)},
        "status_counts": {name: int(np.sum(runs["status"] == name)) for name in ("ok", "no_onset", "nan")},
    }
    lam = spec["polished_eigenvalues"][..., config.rank - 1]  # (level, seed)
    out["lambda"] = {"per_level_median": np.median(lam, axis=1).tolist(),
                     "mu_over_lambda_median": float(np.median(spec["polished_eigenvalues"][..., config.rank] / lam))}
    out["lambda_spread"] = float(lam.max() / lam.min())
    real = runs["arm"] == "polished"
    gamma = runs["coupling"][real]
    out["gamma"] = {"per_mix_median": [float(np.median(gamma[runs["mix_index"][real] == j])) for j in range(mixes)]}
    out["gamma_spread"] = float(gamma.max() / gamma.min())
    out["polish"] = {
        state: {k: float(np.median(models[k][models["state"] == state]))
                for k in ("align_loss", "align_grad_norm", "harm_rate", "benign_accuracy")}
        for state in ("as_trained", "polished")
    }
    out["polish"]["align_grad_norm_max_polished"] = float(np.max(models["align_grad_norm"][models["state"] == "polished"]))

    arms: dict[str, Any] = {}
    for arm in ARMS:
        rows = _rows(runs, runs["arm"] == arm)
        entry = {"s_part": _stats(rows, "s"), "total": _stats(rows, "total"),
                 "eps_median": float(np.median(rows["eps"])), "abs_c1_median": float(np.median(np.abs(rows["c1"]))),
                 "t_c1_scaled_median": _none(np.nanmedian(rows["t_c1"] * rows["task_sharpness"]))}
        if arm == "polished_eps0":
            reached = np.isfinite(rows["crossover_ratio"])
            entry.update(
                crossover_ratio_median=_none(np.median(rows["crossover_ratio"][reached])) if reached.any() else None,
                crossover_ratio_taylor_median=_none(np.nanmedian(rows["crossover_ratio_taylor"][reached]))
                if np.isfinite(rows["crossover_ratio_taylor"][reached]).any() else None,
                crossover_reached_fraction=float(np.mean(reached)),
                crossover_pred_scaled_median=_none(np.nanmedian(rows["crossover_pred"] * rows["task_sharpness"])),
                crossover_pred_in_window_fraction=float(np.mean(rows["crossover_pred"] * rows["task_sharpness"] <= 1.0)),
                lower_bound_holds_fraction=float(np.mean(rows["lower_bound_holds"])),
                lower_bound_holds_window_fraction=float(np.mean(rows["lower_bound_holds_window"])),
            )
        arms[arm] = entry
    out["arms"] = arms

    adam = tables["points"]
    out["adam"] = {
        "task_accuracy_min": float(adam["best_accuracy"].min()),
        "reached_fraction": float(np.mean(adam["reached"])),
        "steps_to_target_median": _none(np.nanmedian(adam["steps_to_target"])) if adam["reached"].any() else None,
        "at_target": {k: float(np.median(adam[f"{k}_at_target"])) for k in ("align_increase", "harm_rate", "s_part")},
        "at_fixed_step": {k: float(np.median(adam[f"{k}_at_fixed"])) for k in ("align_increase", "harm_rate", "s_part")},
        "harm_rate_max_at_fixed_step": float(adam["harm_rate_at_fixed"].max()),
        "fixed_step": config.adam_steps,
    }

    # Diagnostics at theta0 (the polished model, the real task) vs the measured damage.
    real_rows = _rows(runs, real)
    t_w = 1.0 / real_rows["task_sharpness"]
    diagnostics = {
        "overlap": real_rows["overlap"], "eps": real_rows["eps"], "coupling": real_rows["coupling"],
        "coupling_fisher": real_rows["coupling_fisher"],
        "lambda_gamma2": real_rows["sharpness"] * real_rows["coupling"] ** 2,
        "taylor_forecast": sum(real_rows[f"c{p}"] * t_w**p for p in (1, 2, 3, 4)),
    }
    rng = np.random.default_rng(config.seed)
    seeds_of = real_rows["seed"]
    targets = {
        "adam_at_target": adam["align_increase_at_target"],
        "adam_at_fixed_step": adam["align_increase_at_fixed"],
        "flow_total_at_window_end": _value_at(tables["curves"], real_rows["run"], 1.0),
    }
    out["spearman_targets"] = {
        "adam_at_target": f"Adam Delta L_A at the first step with task accuracy >= {config.accuracy_target:g}",
        "adam_at_fixed_step": f"Adam Delta L_A after {config.adam_steps} steps",
        "flow_total_at_window_end": "gradient-flow Delta L_A at t = 1/||H_F||",
    }
    out["spearman_all"] = {
        target: {name: _spearman(x, y, seeds_of, rng) for name, x in diagnostics.items()}
        for target, y in targets.items()
    }
    out["spearman"] = out["spearman_all"]["adam_at_target"]
    return out


def _spearman(x, y, seeds, rng) -> dict[str, Any]:
    res = spearman_with_ci(np.asarray(x, np.float64), np.asarray(y, np.float64), seeds, rng)
    lo, hi = res["ci95"]
    res["ci_excludes_zero"] = bool(lo > 0 or hi < 0)
    return res


def _value_at(curves: dict[str, np.ndarray], run_ids: np.ndarray, t_scaled: float) -> np.ndarray:
    """`Delta L_A` of each run at `t = t_scaled / ||H_F||` (log-log interpolation of the recorded curve)."""
    out = np.empty(len(run_ids))
    for i, r in enumerate(run_ids):
        m = curves["run"] == r
        x, y = np.log(curves["t_scaled"][m]), curves["align_increase"][m]
        out[i] = np.interp(np.log(t_scaled), x, y)
    return out

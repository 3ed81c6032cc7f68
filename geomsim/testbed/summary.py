"""The testbed's numbers: which of the theory's claims held, measured.

* alignment: harm rate and `L_A` after each stage;
* spectrum: rank holding 90% of the alignment operator's trace;
* forecast: Spearman rank correlation between each pre-fine-tuning diagnostic
  and the measured `Delta L_A` after N steps over (task, seed) pairs, with a
  bootstrap CI that resamples seeds;
* early times: fitted onset exponents of `Delta L_A` and of its S-part, the
  accuracy of the Taylor polynomial c1..c4, and which term dominates when;
* orthogonality: `||P_S delta|| / ||delta||` growth and the second-order
  prediction of `||P_S delta(t)||`;
* LoRA vs full fine-tuning.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np
from scipy import stats

from geomsim.fitting import fit_onset
from geomsim.testbed.diagnostics import MASS
from geomsim.theory import first_crossing, time_to_threshold

DIAGNOSTICS = ("overlap", "eps", "coupling", "coupling_fisher", "c4_leading", "abs_c1", "taylor_forecast", "grad_norm")
BOOTSTRAP = 2000


def _percentile_ci(draws: np.ndarray) -> list[float]:
    draws = draws[np.isfinite(draws)]
    return [float(v) for v in np.percentile(draws, [2.5, 97.5])] if draws.size else [float("nan")] * 2


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of `x, y (B, n)` (average ranks for ties); NaN for a constant row."""
    rx, ry = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    denom = np.sqrt(np.sum(rx**2, axis=1) * np.sum(ry**2, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, np.sum(rx * ry, axis=1) / denom, np.nan)


def median(values, *, drop_inf: bool) -> float | None:
    """Median of the values that are not nan (None when none are left).

    `drop_inf` leaves out the infinite ones too: for a quantity defined only where an
    event happened (the steps to an accuracy target a run never reached).  Keep them
    where infinity is a value: a forecast that never crosses is infinitely late and
    counts so in its median.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)] if drop_inf else values[~np.isnan(values)]
    return float(np.median(values)) if values.size else None


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho of two `(n,)` samples (average ranks for ties; NaN if one is constant)."""
    return float(_rowwise_spearman(np.asarray(x)[None], np.asarray(y)[None])[0])


def spearman_with_ci(x: np.ndarray, y: np.ndarray, seeds: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """Rank correlation of a diagnostic with the measured degradation.

    x, y, seeds: `(n_pairs,)`, every seed with the same number of pairs.
    rho: Spearman over all (task, seed) pairs; ci95: percentile bootstrap
    (BOOTSTRAP draws) resampling whole seeds (coarse with few seeds: duplicated
    seeds add ties).  per_seed_rho: Spearman across tasks within each seed (does
    the diagnostic rank the tasks of one model?); its mean and a seed-bootstrap CI.
    """
    unique = np.unique(seeds)
    members = np.stack([np.flatnonzero(seeds == s) for s in unique])  # (n_seeds, pairs per seed)
    picks = rng.integers(0, len(unique), size=(BOOTSTRAP, len(unique)))
    idx = members[picks].reshape(BOOTSTRAP, -1)
    per_seed = _rowwise_spearman(x[members], y[members])
    with warnings.catch_warnings():  # all-NaN draws (constant seeds) stay NaN and are dropped
        warnings.simplefilter("ignore", RuntimeWarning)
        per_seed_draws = np.nanmean(per_seed[picks], axis=1)
        per_seed_mean = float(np.nanmean(per_seed))
    return {
        "rho": float(_rowwise_spearman(x[None], y[None])[0]),
        "ci95": _percentile_ci(_rowwise_spearman(x[idx], y[idx])),
        "per_seed_rho": [float(v) for v in per_seed],
        "per_seed_mean": per_seed_mean,
        "per_seed_ci95": _percentile_ci(per_seed_draws),
        "n_pairs": int(len(x)),
        "n_seeds": int(len(unique)),
    }


def _rank90_estimate(spec, seed: int, d: int) -> dict[str, Any]:
    """90%-mass rank: exact from the top eigenvalues when they reach it, else from SLQ."""
    lam = np.maximum(spec.eigenvalues[seed], 0)
    trace = float(spec.trace[seed])
    top = int(spec.rank90[seed])
    if top <= len(lam):
        return {"rank90": top, "method": "lanczos", "trace": trace}
    nodes, weights = spec.nodes[seed].ravel(), spec.weights[seed].ravel() / spec.nodes.shape[1]
    order = np.argsort(nodes)[::-1]
    mass = np.cumsum(np.maximum(nodes[order], 0) * weights[order]) * d
    count = np.cumsum(weights[order]) * d
    j = int(np.argmax(mass >= MASS * mass[-1]))
    return {"rank90": int(np.ceil(count[j])), "method": "slq", "trace": trace}


def _per_task(values: np.ndarray, tasks: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {t: {"mean": float(np.mean(values[i])), "min": float(np.min(values[i])), "max": float(np.max(values[i]))}
            for i, t in enumerate(tasks)}


def summarise(bed, tables, spec, diag, runs) -> dict[str, Any]:
    cfg = bed.config
    tasks = cfg.finetune_tasks
    rng = np.random.default_rng(cfg.seed)
    d = spec.basis.shape[-1]
    stages = tables["stages"]
    out: dict[str, Any] = {"parameters": int(d), "tasks": list(tasks), "seeds": cfg.seeds}
    out["stages"] = {
        st: {k: float(np.mean(stages[k][stages["stage"] == st])) for k in stages if k not in ("stage", "seed")}
        for st in dict.fromkeys(stages["stage"])
    }
    out["spectrum"] = {
        "top_eigenvalues_mean": np.mean(spec.eigenvalues[:, :5], axis=0).tolist(),
        "per_seed": [_rank90_estimate(spec, s, d) for s in range(cfg.seeds)],
        "top_k_mass_fraction": [float(np.sum(spec.eigenvalues[s, : cfg.rank]) / spec.trace[s]) for s in range(cfg.seeds)],
        "max_relative_residual": float(np.max(spec.residuals / np.abs(spec.eigenvalues))),
    }

    full, early, lora = runs["full"], runs["early"], runs["lora"]
    t_end = float(full.time[0, 0, -1])
    measured = np.asarray(full.align_increase[..., -1], np.float64)  # (task, seed)
    taylor = np.asarray(diag["taylor"], np.float64)
    forecast = sum(taylor[..., j] * t_end**j for j in range(1, taylor.shape[-1]))
    candidates = {
        "overlap": diag["overlap"], "eps": diag["eps"], "coupling": diag["coupling"],
        "coupling_fisher": diag["coupling_fisher"], "c4_leading": diag["c4_leading"], "abs_c1": np.abs(taylor[..., 1]),
        "taylor_forecast": forecast, "grad_norm": diag["grad_norm"],
    }
    seeds = np.tile(np.arange(cfg.seeds), len(tasks))
    out["correlation"] = {
        "target": f"measured Delta L_A after {cfg.finetune_steps} steps (t = {t_end:g})",
        **{name: spearman_with_ci(np.asarray(v, np.float64).ravel(), measured.ravel(), seeds, rng)
           for name, v in candidates.items()},
    }
    # Time to failure: first crossing of tau by the Taylor forecast vs the measured curve.
    tau = cfg.threshold
    t_full = np.asarray(full.time[0, 0], np.float64)
    pred_cross = np.vectorize(lambda *c: float(time_to_threshold(jnp.asarray((0.0, *c)), tau, t_end)),
                              otypes=[float])(*[taylor[..., j] for j in range(1, taylor.shape[-1])])
    meas_cross = np.array([[float(first_crossing(jnp.asarray(t_full), jnp.asarray(full.align_increase[i, s]), tau))
                            for s in range(cfg.seeds)] for i in range(len(tasks))])
    out["time_to_threshold"] = {
        "threshold": tau,
        "predicted": _per_task(pred_cross, tasks),
        "measured": _per_task(meas_cross, tasks),
    }
    out["degradation"] = {
        "align_increase": _per_task(measured, tasks),
        "harm_rate": _per_task(np.asarray(full.extra["harm_rate"][..., -1]), tasks),
        "task_accuracy": _per_task(np.asarray(full.extra["task_accuracy"][..., -1]), tasks),
    }

    # Early times: exponents of Delta L_A and of its S-part, and the Taylor polynomial.
    t = np.asarray(early.time[0, 0], np.float64)
    order = taylor.shape[-1] - 1
    exps: dict[str, Any] = {}
    for i, task in enumerate(tasks):
        rows = []
        for s in range(cfg.seeds):
            y = np.asarray(early.align_increase[i, s], np.float64)
            ys = np.asarray(early.extra["s_quadratic"][i, s], np.float64)
            fit_all = fit_onset(jnp.asarray(t), jnp.asarray(np.abs(y)), slope_tol=0.1, min_decades=0.5)
            fit_s = fit_onset(jnp.asarray(t), jnp.asarray(ys), slope_tol=0.1, min_decades=0.5)
            poly = sum(taylor[i, s, j] * t**j for j in range(1, order + 1))
            scale = np.maximum(np.abs(y), 1e-12)
            terms = np.abs(taylor[i, s, 1:, None] * t[None, :] ** np.arange(1, order + 1)[:, None])
            dominant = (np.argmax(terms, axis=0) + 1).tolist()
            rows.append({
                "align_exponent": float(fit_all.exponent), "align_sign": int(np.sign(y[-1])),
                "s_part_exponent": float(fit_s.exponent),
                "taylor_rel_error_first": float(np.abs(poly[0] - y[0]) / scale[0]),
                "taylor_rel_error_last": float(np.abs(poly[-1] - y[-1]) / scale[-1]),
                "dominant_term_first": dominant[0], "dominant_term_last": dominant[-1],
            })
        exps[task] = rows
    out["early"] = {"t_range": [float(t[0]), float(t[-1])], "per_task": exps}

    # Orthogonality collapse and its second-order prediction from theta0.
    ratio_e = np.asarray(early.subspace_norm / np.maximum(early.delta_norm, 1e-30))
    ratio_f = np.asarray(full.subspace_norm / np.maximum(full.delta_norm, 1e-30))
    pg, phg = np.asarray(diag["s_grad"], np.float64), np.asarray(diag["s_hg"], np.float64)
    pred = np.linalg.norm(-t[None, None, :, None] * pg[:, :, None, :]
                          + 0.5 * t[None, None, :, None] ** 2 * phg[:, :, None, :], axis=-1)
    rel = np.abs(pred - np.asarray(early.subspace_norm)) / np.maximum(np.asarray(early.subspace_norm), 1e-30)
    out["orthogonality"] = {
        task: {
            "ratio_early_start": float(np.mean(ratio_e[i, :, 0])), "ratio_early_end": float(np.mean(ratio_e[i, :, -1])),
            "ratio_full_end": float(np.mean(ratio_f[i, :, -1])),
            "prediction_rel_error_median": float(np.median(rel[i])), "prediction_rel_error_max": float(np.max(rel[i])),
        }
        for i, task in enumerate(tasks)
    }

    lora_measured = np.asarray(lora.align_increase[..., -1], np.float64)
    out["lora"] = {
        "align_increase": _per_task(lora_measured, tasks),
        "harm_rate": _per_task(np.asarray(lora.extra["harm_rate"][..., -1]), tasks),
        "task_accuracy": _per_task(np.asarray(lora.extra["task_accuracy"][..., -1]), tasks),
        "overlap_vs_lora_degradation": spearman_with_ci(
            np.asarray(diag["overlap"], np.float64).ravel(), lora_measured.ravel(), seeds, rng),
        "final_subspace_fraction": _per_task(
            np.asarray(lora.extra["full_subspace_norm"][..., -1])
            / np.maximum(np.asarray(lora.extra["full_delta_norm"][..., -1]), 1e-30), tasks),
    }
    return out

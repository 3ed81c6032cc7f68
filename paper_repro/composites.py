"""Figures drawn across several experiments: negative controls and optimizers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geomsim.plotting.style import ALIGN_LABEL, TIME_LABEL, plt, save


@dataclass(frozen=True)
class Composite:
    needs: tuple[str, ...]
    draw: Callable


def _representative_curve(result):
    """The ok run with the median lambda gamma^2 (a median of curves would mix crossovers)."""
    res, cur = result.results, result.curves
    ok = np.flatnonzero(res["status"] == "ok")
    if not ok.size:
        return None, None
    strength = res["sharpness"][ok] * res["coupling"][ok] ** 2
    pick = ok[np.argsort(strength)[len(ok) // 2]]
    mask = cur["run"] == pick
    y = cur["align_increase"][mask].copy()
    y[y <= cur["floor"][mask]] = np.nan
    return cur["time"][mask], y


def _median_curve(result, normalise: bool):
    """Median over ok runs of Delta L_A(t) (optionally / lambda gamma^2) on the shared grid."""
    res, cur = result.results, result.curves
    ok = np.flatnonzero(res["status"] == "ok")
    if not ok.size:
        return None, None
    runs = cur["run"]
    t = cur["time"][runs == ok[0]]
    ys = []
    for i in ok:
        y = cur["align_increase"][runs == i].copy()
        y[y <= cur["floor"][runs == i]] = np.nan
        if normalise:
            y = y / (res["sharpness"][i] * res["coupling"][i] ** 2)
        ys.append(y)
    return t, np.nanmedian(np.array(ys), axis=0)


def _entry(title, files, numbers, failures, figures_dir):
    return {
        "title": title,
        "files": [str(p.relative_to(figures_dir.parent)) for p in files],
        "numbers": numbers,
        "pass": not failures,
        "failures": failures,
    }


def draw_controls(results, figures_dir: Path):
    cases = [
        ("sweep_default", "AIC holds (quartic)", "C0"),
        ("controls_mu", r"$\mu > 0$", "C1"),
        ("controls_eps", r"$\epsilon > 0$", "C2"),
        ("controls_cubic", "cubic-only coupling", "C3"),
        ("controls_none", "no coupling", "C7"),
    ]
    fig, (ax, ax_s) = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    numbers = {}
    for name, label, color in cases:
        res = results[name].results
        ok = res["status"] == "ok"
        med = float(np.median(res["exponent"][ok])) if ok.any() else None
        numbers[name] = {"median_exponent": med, "status_counts": {s: int(np.sum(res["status"] == s)) for s in np.unique(res["status"].astype(str))}}
        t, y = _representative_curve(results[name])
        tag = f"{label}: exponent {med:.2f}" if med is not None else f"{label}: no onset"
        if t is not None:
            ax.loglog(t, y, color=color, label=tag)
            good = np.isfinite(y)
            slope = np.full_like(y, np.nan)
            slope[good] = np.gradient(np.log(y[good]), np.log(t[good]))
            ax_s.semilogx(t, slope, color=color, label=tag)
        else:
            ax.plot([], [], color=color, label=tag)
    for p in (2, 4, 6):
        ax_s.axhline(p, color="0.7", ls="--", lw=0.7)
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(ALIGN_LABEL + "\nrun with the median $\\lambda\\gamma^2$")
    ax.legend(fontsize=8)
    ax_s.set_xlabel(TIME_LABEL)
    ax_s.set_ylabel("local log-log slope (dimensionless)")
    ax_s.set_ylim(0, 8)
    ax.set_title("The quartic law and its negative controls", fontsize=9)
    ax_s.set_title("Local slopes: 4 only where the AIC holds", fontsize=9)
    files = save(fig, figures_dir / "controls", "fig_controls")
    expected = {"sweep_default": 4, "controls_mu": 2, "controls_eps": 2, "controls_cubic": 6}
    failures = [
        f"{n}: median exponent {numbers[n]['median_exponent']}, expected {p}"
        for n, p in expected.items()
        if numbers[n]["median_exponent"] is None or abs(numbers[n]["median_exponent"] - p) > 0.1
    ]
    if numbers["controls_none"]["median_exponent"] is not None:
        failures.append("controls_none: an onset was fitted where none exists")
    return "controls", _entry("Negative controls side by side", files, numbers, failures, figures_dir)


def draw_optimizers(results, figures_dir: Path):
    names = ["optim_flow", "optim_gd", "optim_momentum", "optim_adam", "optim_sgd"]
    fig, (ax, ax_b) = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    numbers = {}
    for i, name in enumerate(names):
        res = results[name].results
        ok = res["status"] == "ok"
        e = res["exponent"][ok]
        numbers[name] = {
            "exponent_median": float(np.median(e)) if e.size else None,
            "exponent_min": float(e.min()) if e.size else None,
            "exponent_max": float(e.max()) if e.size else None,
            "ok_runs": int(ok.sum()),
            "runs": int(len(ok)),
        }
        t, y = _median_curve(results[name], normalise=True)
        label = name.removeprefix("optim_")
        if t is not None:
            ax.loglog(t, y, color=f"C{i}", label=label)
        if e.size:
            ax_b.boxplot([e], positions=[i], widths=0.5)
    tg = np.geomspace(1e-4, 1, 50)
    ax.loglog(tg, tg**4 / 8, "k--", lw=1, label=r"$t^4/8$")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(r"median $\Delta L_A / (\lambda\gamma^2)$ (param$^2$/coupling$^2$)")
    ax.legend(fontsize=8)
    ax_b.set_xticks(range(len(names)), [n.removeprefix("optim_") for n in names])
    ax_b.axhline(4, color="0.6", ls="--", lw=0.8)
    ax_b.set_ylabel("fitted onset exponent (ok runs)")
    ax.set_title("Same landscapes, different optimizers", fontsize=9)
    ax_b.set_title("Onset exponents: measured, not assumed", fontsize=9)
    files = save(fig, figures_dir / "optimizers", "fig_optimizers")
    failures = []
    for name in ("optim_flow", "optim_gd"):
        med = numbers[name]["exponent_median"]
        if med is None or abs(med - 4) > 0.1:
            failures.append(f"{name}: median exponent {med}, expected 4 +- 0.1")
    return "optimizers", _entry("Optimizers side by side", files, numbers, failures, figures_dir)


DEFENSE_RUNS = {
    "none": "defense_none",
    "static_projection": "defense_static",
    "tracked_projection": "defense_tracked",
    "curvature_projection": "defense_curvature",
}


def _final(result, column):
    """Per run: the last recorded value of a curve column."""
    cur = result.curves
    runs = np.unique(cur["run"])
    return np.array([cur[column][cur["run"] == r][-1] for r in runs])


def _median_or_none(values):
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def draw_defenses(results, figures_dir: Path):
    """Onset laws under each defense and the alignment-kept vs task-reached trade-off (landscapes)."""
    fig, (ax, ax_p) = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    numbers, failures = {}, []
    none = results[DEFENSE_RUNS["none"]]
    task_start = none.curves["task_loss"][none.curves["run"] == 0][0]  # L_F(theta0) - L_F(theta0) = 0 here
    progress_none = task_start - _final(none, "task_loss")
    for i, (defense, name) in enumerate(DEFENSE_RUNS.items()):
        result = results[name]
        res, cur = result.results, result.curves
        ok = res["status"] == "ok"
        final = _final(result, "align_increase")
        progress = (task_start - _final(result, "task_loss")) / progress_none
        peaks = np.array([cur["align_increase"][cur["run"] == r].max() for r in np.unique(cur["run"])])
        entry = {
            "align_increase_median": _median_or_none(final),
            "align_increase_peak_median": _median_or_none(peaks),
            "task_progress_median": _median_or_none(progress),
            "exponent_median": _median_or_none(res["exponent"][ok]),
            "prefactor_ratio_median": _median_or_none(res["prefactor_ratio"][ok]),
            "status_counts": {s: int(np.sum(res["status"] == s)) for s in np.unique(res["status"].astype(str))},
            "overhead_ratio": result.meta["wall_seconds"] / none.meta["wall_seconds"],
            "harm_rate_median": None,  # transformer only
            "task_accuracy_median": None,  # transformer only
        }
        config = result.meta["config"]
        if defense == "tracked_projection":
            cap = res["taylor_c5"] * (config["defense_every"] * config["lr"]) ** 5
            entry["peak_over_derived_cap_median"] = _median_or_none(peaks / cap)
        numbers[defense] = entry
        t = cur["time"][cur["run"] == 0]
        above = np.array([np.where(cur["align_increase"][cur["run"] == r] > cur["floor"][cur["run"] == r],
                                   cur["align_increase"][cur["run"] == r], np.nan) for r in np.unique(cur["run"])])
        if np.isfinite(above).any(axis=0).any():
            y = np.array([np.nanmedian(col) if np.isfinite(col).any() else np.nan for col in above.T])
            ax.loglog(t, y, color=f"C{i}", label=defense.replace("_", " "))
        else:  # nothing above round-off anywhere (the curvature projection): say so in the legend
            ax.plot([], [], color=f"C{i}", label=defense.replace("_", " ") + ": below round-off")
        ax_p.scatter(progress, np.maximum(final, 1e-30), color=f"C{i}", s=14, label=defense.replace("_", " "))
        if defense == "none":
            ax.loglog(t, np.median(res["taylor_c4"]) * t**4, color=f"C{i}", ls=":", lw=1, label=r"$c_4 t^4$")
        if defense == "static_projection":
            ax.loglog(t, np.median(res["taylor_c5"]) * t**5, color=f"C{i}", ls=":", lw=1,
                      label=r"$\beta_r (p\cdot g)(w\cdot H_F g)^2 t^5/4$")
        if defense == "tracked_projection":
            ax.axhline(float(np.median(cap)), color=f"C{i}", ls=":", lw=1, label=r"cap $c_5 (K\,\mathrm{lr})^5$")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(ALIGN_LABEL + "\nmedian over the grid (above round-off)")
    ax.legend(fontsize=7)
    ax.set_title("Onset laws under each defense (rotating landscape)", fontsize=9)
    ax_p.set_yscale("log")
    ax_p.set_xlabel("task progress kept: L_F decrease / undefended L_F decrease (dimensionless)")
    ax_p.set_ylabel(ALIGN_LABEL + " at the horizon\n(round-off and negative values shown at 1e-30)")
    ax_p.legend(fontsize=7)
    ax_p.set_title("Alignment kept vs task reached (one point per grid point)", fontsize=9)
    files = save(fig, figures_dir / "defenses", "fig_defenses")
    expected = {"none": 4, "static_projection": 5}
    for defense, power in expected.items():
        med = numbers[defense]["exponent_median"]
        if med is None or abs(med - power) > 0.1:
            failures.append(f"{defense}: median exponent {med}, expected {power}")
    if numbers["curvature_projection"]["exponent_median"] is not None:
        failures.append("curvature_projection: an onset was fitted where the derived law says none")
    cap_ratio = numbers["tracked_projection"].get("peak_over_derived_cap_median")
    if cap_ratio is None or not 0.5 < cap_ratio < 1.1:
        failures.append(f"tracked_projection: peak / c5 (K lr)^5 = {cap_ratio}, derived ~1")
    transformer = results.get("testbed_defenses")  # its summary, when that experiment ran too
    numbers = {"landscape": numbers, "transformer": transformer["defenses"] if transformer else None}
    return "defenses", _entry("Defenses side by side (landscapes; transformer from testbed_defenses)", files,
                              numbers, failures, figures_dir)


COMPOSITES = [
    Composite(("sweep_default", "controls_mu", "controls_eps", "controls_cubic", "controls_none"), draw_controls),
    Composite(("optim_flow", "optim_gd", "optim_momentum", "optim_adam", "optim_sgd"), draw_optimizers),
    Composite(tuple(DEFENSE_RUNS.values()), draw_defenses),
]

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


COMPOSITES = [
    Composite(("sweep_default", "controls_mu", "controls_eps", "controls_cubic", "controls_none"), draw_controls),
    Composite(("optim_flow", "optim_gd", "optim_momentum", "optim_adam", "optim_sgd"), draw_optimizers),
]

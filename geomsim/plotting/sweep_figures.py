"""The sweep's four figures (plus local slopes), drawn from its tidy tables.

(a) `fig_curves`: Delta L_A(t) on log-log axes with t^4 guide lines;
(b) `fig_collapse`: Delta L_A / (lambda gamma^2) against t onto t^4 / 8;
(c) `fig_exponent`: heatmap of the fitted onset exponent over the grid;
(d) `fig_c4`: fitted against predicted c4 with the identity line;
(e) `fig_local_slope`: local log-log slopes with the fitted onset windows.
Runs whose status is not `ok` are never drawn as if fine: they are left out
of (a), (b), (d), (e) and shown hatched in (c), and counted in the titles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colors as mcolors

from geomsim.io import Table
from geomsim.plotting.style import ALIGN_LABEL, TIME_LABEL, figure, plt, save


def _runs(curves: Table) -> dict[int, dict[str, np.ndarray]]:
    out: dict[int, dict[str, np.ndarray]] = {}
    for run in np.unique(curves["run"]):
        mask = curves["run"] == run
        out[int(run)] = {name: np.asarray(col[mask]) for name, col in curves.items()}
    return out


def _pick(n: int, most: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int))


def _strength(results: Table) -> np.ndarray:
    return results["sharpness"] * results["coupling"] ** 2


def _failed_note(results: Table) -> str:
    bad = int(np.sum(results["status"] != "ok"))
    return f" ({bad} of {len(results['status'])} runs not ok, not drawn)" if bad else ""


def plot_curves(results: Table, curves: Table, out_dir: Path, most: int = 24) -> list[Path]:
    runs = _runs(curves)
    ok = np.flatnonzero(results["status"] == "ok")
    strength = _strength(results)
    positive = strength[strength > 0]
    lo, hi = (positive.min(), positive.max()) if positive.size else (1e-3, 1.0)
    norm = mcolors.LogNorm(vmin=lo, vmax=max(hi, lo * 10))
    cmap = plt.get_cmap("viridis")
    fig, ax = figure()
    t_all = []
    for i in ok[_pick(len(ok), most)] if len(ok) else []:
        run = runs[int(i)]
        good = run["align_increase"] > run["floor"]
        t, y = run["time"][good], run["align_increase"][good]
        ax.loglog(t, y, color=cmap(norm(strength[i])), lw=1.0)
        lo, hi = results["onset_t"][i], results["window_hi"][i]
        win = (t >= lo) & (t <= hi)
        ax.loglog(t[win], y[win], color=cmap(norm(strength[i])), lw=2.6, alpha=0.6)
        t_all.append(t)
    if t_all:
        t = np.concatenate(t_all)
        tg = np.geomspace(t.min(), t.max(), 50)
        t_mid = np.sqrt(t.min() * t.max())
        ymin, ymax = ax.get_ylim()
        for level in np.geomspace(ymin, ymax, 7)[1:-1]:
            ax.loglog(tg, level * (tg / t_mid) ** 4, color="0.6", ls="--", lw=0.7)
        ax.loglog([], [], color="0.6", ls="--", lw=0.7, label=r"guide lines $\propto t^4$")
        ax.loglog([], [], color="k", lw=2.6, alpha=0.6, label="fitted onset window")
        ax.set_ylim(ymin, ymax)
        ax.legend(loc="lower right", fontsize=8)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label=r"$\lambda\gamma^2$ (loss/param$^2$ x coupling$^2$)")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(ALIGN_LABEL)
    ax.set_title("Alignment loss along fine-tuning" + _failed_note(results), fontsize=9)
    return save(fig, out_dir, "fig_curves")


def plot_collapse(results: Table, curves: Table, out_dir: Path) -> list[Path]:
    runs = _runs(curves)
    ok = np.flatnonzero((results["status"] == "ok") & (_strength(results) > 0))
    fig, ax = figure()
    t_all = []
    for i in ok:
        run = runs[int(i)]
        good = run["align_increase"] > run["floor"]
        t = run["time"][good]
        ax.loglog(t, run["align_increase"][good] / _strength(results)[i], color="C0", lw=0.6, alpha=0.35)
        t_all.append(t)
    if t_all:
        tg = np.geomspace(np.concatenate(t_all).min(), np.concatenate(t_all).max(), 100)
        ax.loglog(tg, tg**4 / 8, color="k", lw=1.6, ls="--", label=r"theory $t^4/8$ (flow)")
        if np.all(results["optimizer"][ok] == "gd"):
            lr = float(results["lr"][ok][0])
            n = np.unique(np.maximum(np.round(tg / lr), 1))
            ax.loglog(n * lr, lr**4 * n**2 * (n - 1) ** 2 / 8, color="C3", lw=1.0, ls=":",
                      label=r"discrete GD $\eta^4 n^2 (n-1)^2 / 8$")
        ax.loglog([], [], color="C0", lw=0.8, label=f"{len(ok)} measured runs")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(r"$\Delta L_A(t) / (\lambda \gamma^2)$ (param$^2$/coupling$^2$)")
    ax.set_title("Collapse onto the quartic law" + _failed_note(results), fontsize=9)
    return save(fig, out_dir, "fig_collapse")


def plot_exponent_heatmap(results: Table, out_dir: Path) -> list[Path]:
    sharp, coup = np.unique(results["sharpness"]), np.unique(results["coupling"])
    grid = np.full((len(coup), len(sharp)), np.nan)
    for i, s in enumerate(sharp):
        for j, c in enumerate(coup):
            mask = (results["sharpness"] == s) & (results["coupling"] == c) & (results["status"] == "ok")
            if mask.any():
                grid[j, i] = np.mean(results["exponent"][mask])
    fig, ax = figure()
    edges = lambda v: np.concatenate([[v[0] / 1.2], np.sqrt(v[1:] * v[:-1]), [v[-1] * 1.2]]) if len(v) > 1 else np.array([v[0] / 1.5, v[0] * 1.5])  # noqa: E731
    xs, ys = edges(sharp), edges(coup)
    mesh = ax.pcolormesh(xs, ys, grid, cmap="RdBu_r", norm=mcolors.TwoSlopeNorm(vcenter=4.0, vmin=min(np.nanmin(grid, initial=3.5), 3.5), vmax=max(np.nanmax(grid, initial=4.5), 4.5)))
    missing = np.isnan(grid)
    if missing.any():
        ax.pcolor(xs, ys, np.where(missing, 1.0, np.nan), hatch="xx", alpha=0.0)
        ax.plot([], [], "s", mfc="none", mec="k", label="no fit (status not ok)")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    fig.colorbar(mesh, ax=ax, label="fitted onset exponent (theory: 4)")
    ax.set_xlabel(r"sharpness $\lambda$ (loss/param$^2$)")
    ax.set_ylabel(r"coupling $\gamma = \|P_S H_F g\|$")
    shown = grid[np.isfinite(grid)]
    span = f": {shown.min():.3f} to {shown.max():.3f}" if shown.size else ""
    ax.set_title(f"Onset exponent of $\\Delta L_A(t)$ over the grid{span}", fontsize=9)
    return save(fig, out_dir, "fig_exponent")


def plot_c4(results: Table, out_dir: Path) -> list[Path]:
    ok = (results["status"] == "ok") & np.isfinite(results["c4_fit"]) & (results["c4_pred"] > 0)
    fig, ax = figure()
    x, y = results["c4_pred"][ok], results["c4_fit"][ok]
    if ok.any():
        ax.loglog(x, y, "o", ms=3.5, alpha=0.7, label=f"{int(ok.sum())} runs")
        lim = np.array([min(x.min(), y.min()) / 2, max(x.max(), y.max()) * 2])
        ax.loglog(lim, lim, "k-", lw=1, label="identity")
        ax.fill_between(lim, lim * 0.95, lim * 1.05, color="0.8", label=r"$\pm 5\%$")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel(r"predicted $c_4$ (Taylor coefficient, loss/time$^4$)")
    ax.set_ylabel(r"fitted $c_4$ (loss/time$^4$)")
    ax.set_title("Quartic prefactor: measured vs theory" + _failed_note(results), fontsize=9)
    return save(fig, out_dir, "fig_c4")


def plot_local_slopes(results: Table, curves: Table, out_dir: Path, most: int = 24) -> list[Path]:
    runs = _runs(curves)
    ok = np.flatnonzero(results["status"] == "ok")
    fig, ax = figure()
    for i in ok[_pick(len(ok), most)] if len(ok) else []:
        run = runs[int(i)]
        ax.semilogx(run["time"], run["local_slope"], color="C0", lw=0.7, alpha=0.6)
        win = (run["time"] >= results["onset_t"][i]) & (run["time"] <= results["window_hi"][i])
        ax.semilogx(run["time"][win], run["local_slope"][win], color="C3", lw=1.8, alpha=0.7)
    ax.semilogx([], [], color="C0", label="local slope d log dL_A / d log t")
    ax.semilogx([], [], color="C3", lw=1.8, label="fitted onset window")
    ax.axhline(4, color="k", ls="--", lw=0.8)
    ax.set_ylim(0, 8)
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel("local log-log slope (dimensionless)")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Where the quartic regime holds" + _failed_note(results), fontsize=9)
    return save(fig, out_dir, "fig_local_slope")


def sweep_figures(results: Table, curves: Table, out_dir: str | Path) -> list[Path]:
    """Draw all sweep figures into `out_dir` (PNG + PDF each); returns the paths."""
    out_dir = Path(out_dir)
    paths = []
    paths += plot_curves(results, curves, out_dir)
    paths += plot_collapse(results, curves, out_dir)
    paths += plot_exponent_heatmap(results, out_dir)
    paths += plot_c4(results, out_dir)
    paths += plot_local_slopes(results, curves, out_dir)
    return paths

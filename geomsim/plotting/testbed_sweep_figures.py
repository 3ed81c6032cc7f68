"""Figures of the transformer sharpness x coupling sweep (PNG + PDF each).

fig_sweep_collapse    S-part and total Delta L_A divided by gamma_F^2 vs t, every polished_eps0 run, with t^4/8
fig_sweep_c4          fitted vs predicted quartic coefficient of the S-part (polished_eps0)
fig_sweep_exponents   median fitted exponent over the sharpness x coupling grid, per arm, S-part and total
fig_sweep_controls    local log-log slopes along the flow, per arm: the law and the controls side by side
fig_sweep_forecast    pre-fine-tuning diagnostics vs the damage of the Adam fine-tune
fig_sweep_adam        the Adam fine-tune: task accuracy, Delta L_A and harm rate per step
"""

from __future__ import annotations

import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from geomsim.fitting import local_slopes
from geomsim.plotting.style import plt, save
from geomsim.testbed.sweep.config import ARMS

FLOW_TIME = r"gradient-flow time $t$ (= steps $\times$ learning rate)"
SCALED_TIME = r"$t\,\|H_F\|$ (time in units of the Taylor window)"


def _curves_of(tables, arm):
    runs, curves = tables["runs"], tables["curves"]
    ids = runs["run"][runs["arm"] == arm]
    r = int(np.sum(curves["run"] == ids[0]))
    rows = np.searchsorted(runs["run"], ids)
    pick = {k: curves[k].reshape(-1, r)[ids] for k in ("time", "t_scaled", "align_increase", "s_part")}
    return rows, pick


def plot_collapse(tables, out_dir: Path) -> list[Path]:
    runs = tables["runs"]
    rows, c = _curves_of(tables, "polished_eps0")
    scale = runs["coupling_fisher"][rows] ** 2
    colour = np.log10(runs["sharpness"][rows] * runs["coupling"][rows] ** 2)
    norm = plt.Normalize(colour.min(), colour.max())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), constrained_layout=True, sharey=True)
    for ax, key, title in ((axes[0], "s_part", "S-part (the theorem's quantity)"),
                           (axes[1], "align_increase", r"total $\Delta L_A$")):
        for i in range(len(rows)):
            y = np.abs(c[key][i]) / scale[i]
            ax.loglog(c["time"][i], np.where(y > 0, y, np.nan), color=plt.cm.viridis(norm(colour[i])), lw=0.8, alpha=0.8)
        t = np.geomspace(np.min(c["time"]), np.max(c["time"]), 50)
        ax.loglog(t, t**4 / 8, "k--", lw=2, label=r"$t^4/8$")
        ax.set_xlabel(FLOW_TIME)
        ax.set_title(f"polished, eps = 0: {title}", fontsize=9)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(r"$\Delta / \gamma_F^2$ (time$^4$; $\gamma_F^2 = \lambda\gamma^2$ for k = 1)")
    sm = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
    fig.colorbar(sm, ax=axes, label=r"$\log_{10} \lambda\gamma^2$")
    return save(fig, out_dir, "fig_sweep_collapse")


def plot_c4(tables, out_dir: Path) -> list[Path]:
    runs = tables["runs"]
    m = (runs["arm"] == "polished_eps0") & (runs["s_power"] == 4)
    fig, ax = plt.subplots(figsize=(5.2, 4.4), constrained_layout=True)
    sigmas = np.unique(runs["sigma"])
    for j, sigma in enumerate(sigmas):
        sel = m & (runs["sigma"] == sigma)
        ax.loglog(runs["c4_s"][sel], runs["s_prefactor"][sel], "o", ms=4, color=f"C{j}", label=f"sigma = {sigma:g}")
    lo = np.nanmin(runs["c4_s"][m]) if m.any() else 1e-3
    hi = np.nanmax(runs["c4_s"][m]) if m.any() else 1.0
    ax.loglog([lo, hi], [lo, hi], "k--", lw=1, label="fit = prediction")
    ax.set_xlabel(r"predicted $c_4 = \frac{1}{8}(P_SH_Fg)^T H_A (P_SH_Fg)$ (nats/time$^4$)")
    ax.set_ylabel(r"fitted $c_4$ of the S-part (nats/time$^4$)")
    ax.set_title("Quartic prefactor on the transformer (polished, eps = 0)", fontsize=9)
    ax.legend(fontsize=8)
    return save(fig, out_dir, "fig_sweep_c4")


def plot_exponents(tables, out_dir: Path) -> list[Path]:
    runs = tables["runs"]
    sigmas, mixes = np.unique(runs["sigma"])[::-1], np.unique(runs["mix"])
    fig, axes = plt.subplots(2, len(ARMS), figsize=(4.2 * len(ARMS), 7), constrained_layout=True)
    for j, arm in enumerate(ARMS):
        for i, (prefix, label) in enumerate((("s", "S-part"), ("total", r"total $\Delta L_A$"))):
            grid = np.full((len(sigmas), len(mixes)), np.nan)
            for a, sigma in enumerate(sigmas):
                for b, mix in enumerate(mixes):
                    sel = (runs["arm"] == arm) & (runs["sigma"] == sigma) & (runs["mix"] == mix) & runs[f"{prefix}_fit_ok"]
                    if sel.any():
                        grid[a, b] = np.median(runs[f"{prefix}_exponent"][sel])
            ax = axes[i, j]
            im = ax.imshow(grid, cmap="coolwarm", vmin=0.5, vmax=4.5, origin="upper")
            for (a, b), v in np.ndenumerate(grid):
                ax.text(b, a, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(len(mixes)), [f"{m:g}" for m in mixes])
            ax.set_yticks(range(len(sigmas)), [f"{s:g}" for s in sigmas])
            ax.set_xlabel("coupling knob: weight a of the mixed-in task")
            ax.set_ylabel("sharpness knob: sigma = 1 - target p(refuse)")
            ax.set_title(f"{arm}: {label} (median over seeds)", fontsize=9)
    fig.colorbar(im, ax=axes, label="fitted onset exponent")
    return save(fig, out_dir, "fig_sweep_exponents")


def plot_controls(tables, out_dir: Path) -> list[Path]:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True, sharey=True)
    for j, arm in enumerate(ARMS):
        _, c = _curves_of(tables, arm)
        for ax, key in zip(axes, ("s_part", "align_increase"), strict=True):
            slopes = np.asarray(jax.vmap(local_slopes)(jnp.asarray(c["time"]), jnp.asarray(np.abs(c[key]))))
            x = np.median(c["t_scaled"], axis=0)
            for row in slopes:
                ax.semilogx(x, row, color=f"C{j}", lw=0.4, alpha=0.25)
            with warnings.catch_warnings():  # times where no run has a slope stay blank
                warnings.simplefilter("ignore", RuntimeWarning)
                median = np.nanmedian(slopes, axis=0)
            ax.semilogx(x, median, color=f"C{j}", lw=2.2, label=f"{arm} (median)")
    for ax, title in zip(axes, ("S-part", r"total $\Delta L_A$"), strict=True):
        for level in (1, 2, 4):
            ax.axhline(level, color="0.6", lw=0.8, ls=":")
        ax.axvline(1.0, color="0.3", lw=0.8, ls="--")
        ax.set_ylim(-0.5, 6.0)
        ax.set_xlabel(SCALED_TIME)
        ax.set_title(f"{title}: local slope d log / d log t", fontsize=9)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("local log-log slope (onset exponent)")
    return save(fig, out_dir, "fig_sweep_controls")


def plot_forecast(tables, summary, out_dir: Path) -> list[Path]:
    runs = tables["runs"]
    real = runs["arm"] == "polished"
    rho = summary["spearman"]
    damage = tables["points"]["align_increase_at_target"]
    t_w = 1.0 / runs["task_sharpness"][real]
    values = {
        "overlap": (runs["overlap"][real], r"overlap $\|P_Sg\|^2/\|g\|^2$"),
        "coupling_fisher": (runs["coupling_fisher"][real], r"$\gamma_F = \|F^{1/2}P_SH_Fg\|$"),
        "lambda_gamma2": (runs["sharpness"][real] * runs["coupling"][real] ** 2, r"$\lambda\gamma^2$"),
        "taylor_forecast": (np.abs(sum(runs[f"c{p}"][real] * t_w**p for p in (1, 2, 3, 4))),
                            r"|Taylor c1..c4 at $t = 1/\|H_F\|$| (nats)"),
    }
    fig, axes = plt.subplots(1, len(values), figsize=(4.0 * len(values), 4.0), constrained_layout=True)
    mixes = np.unique(runs["mix"][real])
    for ax, (name, (x, label)) in zip(axes, values.items(), strict=True):
        for j, mix in enumerate(mixes):
            sel = runs["mix"][real] == mix
            ax.loglog(np.abs(x[sel]), np.abs(damage[sel]), "o", ms=4, color=f"C{j}", label=f"a = {mix:g}")
        r = rho[name]
        ax.set_xlabel(label)
        ax.set_title(f"Spearman {r['rho']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]", fontsize=9)
    axes[0].set_ylabel(r"Adam $|\Delta L_A|$ at the accuracy target (nats)")
    axes[0].legend(fontsize=7)
    return save(fig, out_dir, "fig_sweep_forecast")


def plot_adam(tables, summary, out_dir: Path) -> list[Path]:
    adam = tables["adam"]
    n_points = int(adam["point"].max()) + 1
    shape = (n_points, -1)
    steps = adam["steps"].reshape(shape)[0]
    mix = adam["mix"].reshape(shape)[:, 0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.0), constrained_layout=True)
    for j, m in enumerate(np.unique(mix)):
        sel = mix == m
        for ax, key in zip(axes, ("task_accuracy", "align_increase", "harm_rate"), strict=True):
            v = adam[key].reshape(shape)[sel]
            if key == "align_increase":  # >= 0 up to round-off: theta0 is a minimum of L_A
                v = np.maximum(v, 1e-12)
            ax.plot(steps, np.median(v, axis=0), color=f"C{j}", lw=2, label=f"a = {m:g} (median)")
            for row in v:
                ax.plot(steps, row, color=f"C{j}", lw=0.4, alpha=0.3)
    axes[0].axhline(summary["config"]["accuracy_target"], color="k", ls="--", lw=1, label="accuracy target")
    labels = ("held-out task accuracy (fraction)", r"$\Delta L_A$ (nats, floored at $10^{-12}$)",
              "harm rate (fraction not refused)")
    for ax, label in zip(axes, labels, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("Adam steps")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    axes[0].set_title(f"Adam, lr {summary['config']['adam_lr']:g}, from the polished models", fontsize=9)
    return save(fig, out_dir, "fig_sweep_adam")


def testbed_sweep_figures(tables, summary, out_dir) -> list[Path]:
    """Draw every sweep figure into `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    paths = []
    paths += plot_collapse(tables, out_dir)
    paths += plot_c4(tables, out_dir)
    paths += plot_exponents(tables, out_dir)
    paths += plot_controls(tables, out_dir)
    paths += plot_forecast(tables, summary, out_dir)
    paths += plot_adam(tables, summary, out_dir)
    return paths

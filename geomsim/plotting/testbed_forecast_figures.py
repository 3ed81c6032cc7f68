"""Figures of the forecast validation on the transformer (`python -m geomsim.testbed forecast`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geomsim.plotting.style import plt, save

DAMAGE_LABEL = r"$\Delta L_A$ (nats)"


def plot_examples(tables, summary, out_dir: Path) -> list[Path]:
    """Measured curves against the forecasts for four runs (the ones reaching the highest
    level first, spread over the grid): GD's methods on the GD fine-tune (top row), Adam's
    on the Adam fine-tune from the same theta0 (bottom row)."""
    runs, curves = tables["forecast_runs"], tables["forecast_curves"]
    top = f"steps_to_{summary['levels'][-1]:g}"
    order = np.argsort(np.where(np.isfinite(runs[top]), runs[top], np.inf))
    picks = order[np.linspace(0, len(order) - 1, min(4, len(order))).astype(int)]
    rows = {"gd": ("measured", "GD steps (lr = scale / ||H_F||)"), "adam": ("adam_measured", "Adam steps")}
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(3.4 * len(picks), 3.3 * len(rows)),
                             constrained_layout=True, squeeze=False)
    for row, (against, (measured, xlabel)) in zip(axes, rows.items(), strict=True):
        names = [measured, *(m for m, d in summary["methods"].items() if d["against"] == against)]
        for ax, run in zip(row, picks, strict=True):
            mask = curves["run"] == run
            for i, name in enumerate(names):
                sel = mask & (curves["curve"] == name)
                values = np.asarray(curves["align_increase"][sel], dtype=float)
                style = dict(color="k", lw=2.0, marker="o", ms=3) if name == measured else dict(color=f"C{i - 1}",
                                                                                               lw=1)
                # Values far above the axes (an unbounded forecast reaches 1e80) are drawn at its top edge.
                shown = np.where(values > 0, np.minimum(values, 1e3), np.nan)
                ax.loglog(curves["step"][sel], shown, label=name.replace("_", " "), **style)
            for level in summary["levels"]:
                ax.axhline(level, color="0.6", ls=":", lw=0.8)
            ax.set_ylim(1e-9, 10)
            ax.set_xlabel(xlabel)
            ax.set_title(f"level {runs['level'][run]}, mix {runs['mix'][run]:g}, seed {runs['seed'][run]}",
                         fontsize=8)
        row[0].set_ylabel(DAMAGE_LABEL)
        row[0].legend(fontsize=6)
    fig.suptitle("Forecasts from theta0 vs the measured fine-tunes (dotted: scored levels)", fontsize=10)
    return save(fig, out_dir, "fig_forecast_examples")


def plot_ratios(tables, summary, out_dir: Path, *, extra=None, stem: str = "fig_forecast_ratios",
                title: str | None = None) -> list[Path]:
    """Forecast / measured steps to each level, every run, per method (band: within 2x).

    `extra`: `{level: {label: ratios}}` drawn after geomsim's methods (e.g. a peer's
    forecasts on the same runs; inf = never crosses, nan = the run never reaches the level)."""
    runs = tables["forecast_runs"]
    levels = summary["levels"]
    fig, axes = plt.subplots(1, len(levels), figsize=(4.4 * len(levels), 3.9), constrained_layout=True,
                             squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        columns = {name: np.asarray(runs[f"{name}_t_ratio_{level:g}"], dtype=float) for name in summary["methods"]}
        columns.update((extra or {}).get(level, {}))
        for i, ratio in enumerate(columns.values()):
            ratio = ratio[~np.isnan(ratio)]
            shown = np.clip(np.where(np.isinf(ratio), 1e4, ratio), 1e-3, 1e4)
            jitter = np.random.default_rng(i).uniform(-0.25, 0.25, shown.size)
            ax.scatter(i + jitter, shown, s=8, color=f"C{i}", alpha=0.7)
        ax.axhspan(0.5, 2.0, color="C2", alpha=0.12, label="within 2x")
        ax.axhline(1.0, color="0.4", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(columns)), [c.replace("_", "\n").replace(" (", "\n(") for c in columns],
                      fontsize=7 if len(columns) <= 5 else 6)
        reached = {d["against"]: d["levels"][f"{level:g}"]["reached_runs"] for d in summary["methods"].values()}
        ax.set_title(f"level {level:g} nats (runs reaching it: " + ", ".join(f"{k} {v}" for k, v in reached.items())
                     + ")", fontsize=9)
        ax.set_ylabel("forecast / measured steps to the level (never: 1e4)")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, out_dir, stem)


def plot_verdict(tables, summary, out_dir: Path) -> list[Path]:
    """The verdict's early end (the earliest calibrated lower end over a family's methods;
    cross-validated over seeds, or from an external calibration) against the measured
    crossing, every run and level; a run that never reached the level is drawn at the end
    of its measurement (open marker: only known to cross later)."""
    runs = tables["forecast_runs"]
    external = "external_calibration" in summary
    panels = [(verdict, "adam_" if verdict == "adam" else "", {"gd": "GD", "gd_linearized": "GD",
                                                                "adam": "Adam"}[verdict])
              for verdict in summary["verdict"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.4), constrained_layout=True)
    for ax, (family, prefix, unit) in zip(axes, panels, strict=True):
        finite = np.asarray(runs[f"{prefix}finite"], dtype=bool)
        end = np.asarray(runs[f"{prefix}measured_end"], dtype=float)
        for i, level in enumerate(summary["levels"]):
            meas = np.asarray(runs[f"{prefix}steps_to_{level:g}"], dtype=float)
            low = np.asarray(runs[f"{family}_verdict_steps_{level:g}"], dtype=float)
            reached = finite & np.isfinite(meas) & np.isfinite(low)
            never = finite & ~np.isfinite(meas) & np.isfinite(low)
            ax.scatter(meas[reached], low[reached], s=12, color=f"C{i}", label=f"{level:g} nats")
            ax.scatter(end[never], low[never], s=12, facecolors="none", edgecolors=f"C{i}", marker=">")
        lo, hi = ax.get_xlim()[0], max(ax.get_xlim()[1], ax.get_ylim()[1])
        line = np.geomspace(max(min(lo, ax.get_ylim()[0]), 1e-1), hi, 2)
        ax.loglog(line, line, color="0.3", lw=0.8, label="verdict = measured")
        ax.loglog(line, 2 * line, color="C3", lw=0.8, ls="--", label="late by 2x")
        scores = summary["verdict"][family]["external" if external else "cross_validated"]
        late = "n/a" if scores["late"] is None else f"{scores['late']:.0%}"
        which = " (--task-model linearized)" if family == "gd_linearized" else ""
        ax.set_title(f"{unit}{which}: early end after the\nmeasured crossing in {late} of {scores['runs']} crossings",
                     fontsize=9)
        ax.set_xlabel(f"measured {unit} steps to the level (open: not reached by then)")
        ax.set_ylabel(f"verdict: earliest calibrated {unit} step")
        ax.legend(fontsize=7)
    how = ("calibration from " + summary["external_calibration"]["source"].split(":")[0] if external
           else "calibrated on three seeds, scored on the fourth")
    fig.suptitle(f"The verdict's early end vs the measured fine-tunes ({how})", fontsize=10)
    return save(fig, out_dir, "fig_forecast_verdict")


def forecast_figures(tables, summary, out_dir: Path) -> list[Path]:
    files: list[Path] = []
    for draw in (plot_examples, plot_ratios, plot_verdict):
        files += draw(tables, summary, out_dir)
    return files

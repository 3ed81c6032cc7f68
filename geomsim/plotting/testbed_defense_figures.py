"""Figures of the transformer defense comparison (`python -m geomsim.testbed defenses`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geomsim.plotting.style import plt, save

DAMAGE_LABEL = r"$\Delta L_A$ (nats)"


def plot_pareto(tables, summary, out_dir: Path) -> list[Path]:
    """Alignment kept vs task reached at the fixed step: one point per defense and (level, mix, seed)."""
    pts = tables["defense_points"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for i, name in enumerate(summary["defenses"]):
        mask = pts["defense"] == name
        for ax, (acc, dmg, when) in zip(axes, (("task_accuracy_at_fixed", "align_increase_at_fixed",
                                                f"step {summary['fixed_step']}"),
                                               ("task_accuracy_at_target", "align_increase_at_target",
                                                f"first step at {summary['accuracy_target']:.0%} accuracy")),
                                        strict=True):
            ax.scatter(pts[acc][mask], np.maximum(pts[dmg][mask], 1e-8), s=14, color=f"C{i}", alpha=0.7,
                       label=name.replace("_", " "))
            ax.set_title(f"at the {when}", fontsize=9)
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("held-out task accuracy (fraction)")
        ax.set_ylabel(DAMAGE_LABEL + " (floored at 1e-8)")
        ax.legend(fontsize=7)
    fig.suptitle("Defenses on the transformer: alignment kept vs task reached", fontsize=10)
    return save(fig, out_dir, "fig_defense_pareto")


def plot_curves(tables, summary, out_dir: Path) -> list[Path]:
    """Median Delta L_A, harm rate and task accuracy along the Adam fine-tune, per defense."""
    cur = tables["defenses"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for i, name in enumerate(summary["defenses"]):
        mask = cur["defense"] == name
        steps = np.unique(cur["step"][mask])
        for ax, key in zip(axes, ("align_increase", "harm_rate", "task_accuracy"), strict=True):
            med = [np.median(cur[key][mask & (cur["step"] == s)]) for s in steps]
            ax.plot(steps, med, color=f"C{i}", label=name.replace("_", " "))
    axes[0].set_yscale("symlog", linthresh=1e-4)
    for ax, label in zip(axes, (DAMAGE_LABEL, "harm rate (fraction of held-out harmful prompts answered)",
                                "held-out task accuracy (fraction)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("Adam steps")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle("Median over (level, mix, seed) points", fontsize=10)
    return save(fig, out_dir, "fig_defense_curves")


def defense_figures(tables, summary, out_dir: Path) -> list[Path]:
    files: list[Path] = []
    for draw in (plot_pareto, plot_curves):
        files += draw(tables, summary, out_dir)
    return files

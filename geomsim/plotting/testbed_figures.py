"""Figures of the transformer testbed (PNG + PDF each).

fig_tb_spectrum       alignment operator: top eigenvalues and SLQ density
fig_tb_forecast       pre-fine-tuning diagnostics vs measured degradation
fig_tb_orthogonality  ||P_S delta|| / ||delta|| along fine-tuning; ||P_S delta|| vs its prediction
fig_tb_taylor         early Delta L_A(t) vs the Taylor polynomial; the S-part vs t^4
fig_tb_lora           full fine-tuning vs LoRA: alignment loss and harm rate per task
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geomsim.plotting.style import TIME_LABEL, plt, save


def _task_colors(tasks):
    return {t: f"C{i}" for i, t in enumerate(tasks)}


def plot_spectrum(spec, summary, out_dir: Path) -> list[Path]:
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(10, 4.0), constrained_layout=True)
    for s in range(spec.eigenvalues.shape[0]):
        lam = spec.eigenvalues[s]
        ax.semilogy(np.arange(1, len(lam) + 1), np.maximum(lam, 1e-12), "o-", ms=3, label=f"seed {s}")
        nodes, weights = spec.nodes[s].ravel(), spec.weights[s].ravel() / spec.nodes.shape[1]
        pos = nodes > 0
        hist, edges = np.histogram(np.log10(nodes[pos]), bins=30, weights=weights[pos])
        ax_d.step(10 ** edges[:-1], hist, where="post", label=f"seed {s}")
    ranks = [r["rank90"] for r in summary["spectrum"]["per_seed"]]
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue of the alignment operator (nats/param$^2$)")
    ax.set_title(f"Top of the spectrum; rank holding 90% of the trace: {ranks} of d = {summary['parameters']}", fontsize=9)
    ax.legend(fontsize=8)
    ax_d.set_xscale("log")
    ax_d.set_yscale("log")
    ax_d.set_xlabel("eigenvalue (nats/param$^2$, log bins)")
    ax_d.set_ylabel("spectral density (fraction of eigenvalues, SLQ)")
    ax_d.set_title("Bulk: stochastic Lanczos quadrature", fontsize=9)
    ax_d.legend(fontsize=8)
    return save(fig, out_dir, "fig_tb_spectrum")


def plot_forecast(diag_table, summary, runs, tasks, out_dir: Path) -> list[Path]:
    measured = np.asarray(runs["full"].align_increase[..., -1]).ravel()
    colors = _task_colors(tasks)
    names = [("overlap", "overlap score $\\|P_S g\\|^2/\\|g\\|^2$"), ("taylor_forecast", "Taylor forecast at $t_N$ (nats)"),
             ("coupling", "coupling $\\gamma = \\|P_S H_F g\\|$")]
    fig, axes = plt.subplots(1, len(names), figsize=(13, 4.0), constrained_layout=True)
    t_end = float(runs["full"].time[0, 0, -1])
    order = sum(1 for name in diag_table if name[0] == "c" and name[1:].isdigit())
    taylor = np.stack([diag_table[f"c{j}"] for j in range(1, order + 1)], axis=-1)
    values = {
        "overlap": diag_table["overlap"], "coupling": diag_table["coupling"],
        "taylor_forecast": np.sum(taylor * t_end ** np.arange(1, order + 1), axis=-1),
    }
    for ax, (name, label) in zip(axes, names, strict=True):
        x = values[name]
        for task in tasks:
            m = diag_table["task"] == task
            ax.scatter(np.abs(x[m]), measured[m], color=colors[task], label=task, s=22)
        c = summary["correlation"][name]
        ax.set_xscale("log")
        ax.set_xlabel(label + (" (abs)" if name == "taylor_forecast" else ""))
        ax.set_ylabel("measured $\\Delta L_A$ after N steps (nats)")
        ax.set_title(f"Spearman {c['rho']:.2f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]", fontsize=9)
    axes[0].legend(fontsize=8)
    return save(fig, out_dir, "fig_tb_forecast")


def plot_orthogonality(runs, diag, tasks, out_dir: Path) -> list[Path]:
    colors = _task_colors(tasks)
    fig, (ax, ax_p) = plt.subplots(1, 2, figsize=(10, 4.0), constrained_layout=True)
    early, full = runs["early"], runs["full"]
    t = np.asarray(early.time[0, 0])
    for i, task in enumerate(tasks):
        for run, style in ((early, "-"), (full, "--")):
            ratio = np.asarray(run.subspace_norm[i] / np.maximum(run.delta_norm[i], 1e-30))
            ax.semilogx(np.asarray(run.time[i, 0]), np.median(ratio, axis=0), style, color=colors[task],
                        label=task if run is early else None)
        pg, phg = np.asarray(diag["s_grad"][i, 0]), np.asarray(diag["s_hg"][i, 0])
        pred = np.linalg.norm(-t[:, None] * pg[None] + 0.5 * t[:, None] ** 2 * phg[None], axis=-1)
        ax_p.loglog(t, np.asarray(early.subspace_norm[i, 0]), "-", color=colors[task], label=task)
        ax_p.loglog(t, pred, ":", color=colors[task], lw=2)
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(r"$\|P_S\delta\| / \|\delta\|$ (median over seeds)")
    ax.set_title("Orthogonality along fine-tuning (solid: early run, dashed: full run)", fontsize=9)
    ax.legend(fontsize=8)
    ax_p.plot([], [], "k:", lw=2, label=r"prediction $\|-tP_Sg + \frac{t^2}{2}P_SH_Fg\|$")
    ax_p.set_xlabel(TIME_LABEL)
    ax_p.set_ylabel(r"$\|P_S\delta(t)\|$ (param units, seed 0)")
    ax_p.set_title("S-displacement vs its second-order prediction from $\\theta_0$", fontsize=9)
    ax_p.legend(fontsize=7)
    return save(fig, out_dir, "fig_tb_orthogonality")


def plot_taylor(runs, diag, tasks, out_dir: Path) -> list[Path]:
    colors = _task_colors(tasks)
    early = runs["early"]
    t = np.asarray(early.time[0, 0])
    fig, (ax, ax_s) = plt.subplots(1, 2, figsize=(10, 4.0), constrained_layout=True)
    for i, task in enumerate(tasks):
        y = np.asarray(early.align_increase[i, 0])
        c = np.asarray(diag["taylor"][i, 0])
        poly = sum(c[j] * t**j for j in range(1, len(c)))
        ax.loglog(t, np.abs(y), "-", color=colors[task], label=task)
        ax.loglog(t, np.abs(poly), ":", color=colors[task], lw=2)
        ys = np.asarray(early.extra["s_quadratic"][i, 0])
        ax_s.loglog(t[ys > 0], ys[ys > 0], "-", color=colors[task], label=task)
    order = np.asarray(diag["taylor"]).shape[-1] - 1
    ax.plot([], [], "k:", lw=2, label=f"Taylor polynomial c1..c{order} at $\\theta_0$")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(r"$|\Delta L_A(t)|$ (nats, seed 0)")
    ax.set_title("Early times: measured vs Taylor expansion", fontsize=9)
    ax.legend(fontsize=7)
    lo, hi = ax_s.get_ylim()
    for level in np.geomspace(lo, hi, 5)[1:-1]:
        ax_s.loglog(t, level * (t / t[len(t) // 2]) ** 4, color="0.7", ls="--", lw=0.7)
    ax_s.set_ylim(lo, hi)
    ax_s.plot([], [], color="0.7", ls="--", label=r"$\propto t^4$")
    ax_s.set_xlabel(TIME_LABEL)
    ax_s.set_ylabel(r"S-part $\frac{1}{2}(P_S\delta)^T A (P_S\delta)$ (nats, seed 0)")
    ax_s.set_title("The S-part of the alignment loss", fontsize=9)
    ax_s.legend(fontsize=7)
    return save(fig, out_dir, "fig_tb_taylor")


def plot_lora(runs, tasks, out_dir: Path) -> list[Path]:
    fig, (ax, ax_h) = plt.subplots(1, 2, figsize=(10, 4.0), constrained_layout=True)
    x = np.arange(len(tasks))
    for offset, (name, label) in zip((-0.2, 0.2), (("full", "full fine-tuning"), ("lora", "LoRA")), strict=True):
        run = runs[name]
        dla = np.asarray(run.align_increase[..., -1])
        harm = np.asarray(run.extra["harm_rate"][..., -1])
        ax.bar(x + offset, np.mean(dla, axis=1), width=0.4, yerr=np.std(dla, axis=1), label=label)
        ax_h.bar(x + offset, np.mean(harm, axis=1), width=0.4, yerr=np.std(harm, axis=1), label=label)
    for a, ylabel in ((ax, r"$\Delta L_A$ after N steps (nats)"), (ax_h, "harm rate after N steps (fraction)")):
        a.set_xticks(x, tasks, rotation=20)
        a.set_ylabel(ylabel)
        a.legend(fontsize=8)
    ax.set_title("Alignment loss: full vs low-rank adapters (mean, std over seeds)", fontsize=9)
    ax_h.set_title("Harmful prompts not refused (greedy)", fontsize=9)
    return save(fig, out_dir, "fig_tb_lora")


def testbed_figures(tables, summary, spec, diag, runs, bed, out_dir) -> list[Path]:
    """Draw every testbed figure into `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    tasks = bed.config.finetune_tasks
    paths = []
    paths += plot_spectrum(spec, summary, out_dir)
    paths += plot_forecast(tables["diagnostics"], summary, runs, tasks, out_dir)
    paths += plot_orthogonality(runs, diag, tasks, out_dir)
    paths += plot_taylor(runs, diag, tasks, out_dir)
    paths += plot_lora(runs, tasks, out_dir)
    return paths

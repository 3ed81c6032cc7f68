"""Run the transformer testbed end to end and write tidy results.

Stages (each reuses a checkpoint saved under its key: its settings, its parent's key, the code's version):
    pretrain -> align -> diagnostics at the aligned model -> fine-tune
    (full: the degradation after N steps; early: tiny steps resolving the
    Taylor regime; lora: low-rank adapters) -> tables, summary, figures.

Output folder:
    checkpoints/        pretrain.eqx / align.eqx (+ .json metadata)
    stages.csv          per seed: L_A, harm rate, benign accuracy after each stage
    spectrum.csv        per seed: top eigenvalues of the alignment operator
    diagnostics.csv     per (task, seed): eps, gamma, overlap, Taylor c1..c<taylor_order>, ...
    trajectories.csv    tidy: run (full/early/lora), task, seed, step, t, metrics
    summary.json        correlations with bootstrap CIs, exponents, timings
    fig_*.png / .pdf    the testbed figures
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from geomsim.config import stage_key
from geomsim.io import Table, environment_versions, write_csv, write_json
from geomsim.sweep.progress import Progress
from geomsim.testbed import diagnostics, stages
from geomsim.testbed.checkpoints import checkpointed
from geomsim.testbed.config import ALIGN_FIELDS, TestbedConfig, pretrain_key
from geomsim.testbed.summary import summarise


@dataclass
class TestbedResult:
    """Everything the testbed measured (also written under `out_dir`)."""

    tables: dict[str, Table]
    summary: dict[str, Any]
    out_dir: Path

    __test__ = False  # not a pytest test class, despite the name


def _trained(bed, out_dir, name, key, params, train_fn, timings, bar):
    params, losses, _ = checkpointed(out_dir, name, key, params, lambda: train_fn(bed, params), timings=timings,
                                     bar=bar, meta={"config": bed.config.to_dict()})
    return params, None if losses is None else np.asarray(losses)


def _stage_rows(bed, evaluations: dict[str, dict[str, np.ndarray]]) -> Table:
    rows: dict[str, list] = {"stage": [], "seed": []}
    for stage, values in evaluations.items():
        for seed in range(bed.config.seeds):
            rows["stage"].append(stage)
            rows["seed"].append(seed)
            for key, arr in values.items():
                rows.setdefault(key, []).append(float(arr[seed]))
    return {k: np.array(v, dtype=object if k == "stage" else None) for k, v in rows.items()}


def _trajectory_rows(bed, name: str, traj) -> Table:
    tasks = bed.config.finetune_tasks
    n_task, n_seed, n_rec = np.asarray(traj.time).shape
    grid_task, grid_seed, _ = np.meshgrid(np.arange(n_task), np.arange(n_seed), np.arange(n_rec), indexing="ij")
    table: Table = {
        "run": np.array([name] * grid_task.size, dtype=object),
        "task": np.array([tasks[i] for i in grid_task.ravel()], dtype=object),
        "seed": grid_seed.ravel(),
    }
    for field in ("steps", "time", "align_increase", "task_loss", "subspace_norm", "delta_norm"):
        table[field] = np.asarray(getattr(traj, field), dtype=np.float64).ravel()
    for field, values in traj.extra.items():
        table[field] = np.asarray(values, dtype=np.float64).ravel()
    if name == "lora":  # compare on the merged full-parameter displacement
        table["subspace_norm"] = table.pop("full_subspace_norm")
        table["delta_norm"] = table.pop("full_delta_norm")
    return table


def _diagnostic_rows(bed, diag: dict[str, np.ndarray]) -> Table:
    tasks = bed.config.finetune_tasks
    n_task, n_seed = np.asarray(diag["eps"]).shape
    table: Table = {
        "task": np.array([tasks[i] for i in range(n_task) for _ in range(n_seed)], dtype=object),
        "seed": np.tile(np.arange(n_seed), n_task),
    }
    for key, values in diag.items():
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim == 2:
            table[key] = arr.ravel()
        elif key == "taylor":
            for j in range(1, arr.shape[-1]):
                table[f"c{j}"] = arr[..., j].ravel()
    return table


def _concat(tables: list[Table]) -> Table:
    names = list(dict.fromkeys(n for t in tables for n in t))
    out: Table = {}
    for n in names:
        parts = []
        for t in tables:
            size = len(next(iter(t.values())))
            parts.append(t[n] if n in t else np.full(size, np.nan))
        out[n] = np.concatenate(parts)
    return out


def run_testbed(
    config: TestbedConfig, out_dir: str | Path, *, progress: bool = True, plots: bool = True,
    stop_after: str | None = None,
) -> TestbedResult:
    """Run the testbed for `config` into `out_dir` (see module docstring).

    `stop_after="pretrain"` or `"align"` trains (or loads) only up to that
    stage and writes `stages.csv`: the way to (re)run one training stage alone.
    """
    if stop_after not in (None, "pretrain", "align"):
        raise ValueError(f"stop_after: must be None, 'pretrain' or 'align' (got {stop_after!r})")
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # pretrain, align, spectrum, diagnostics, 3 fine-tunes, report
    bar = Progress(8, "testbed", enabled=progress)
    timings: dict[str, float] = {}
    bed = stages.build(config)
    params = stages.init_params(bed)
    evaluations = {"init": stages.evaluate(bed, params)}
    pretrained = pretrain_key(config)
    params, pre_losses = _trained(bed, out_dir, "pretrain", pretrained, params, stages.pretrain, timings, bar)
    evaluations["pretrain"] = stages.evaluate(bed, params)
    if stop_after != "pretrain":
        aligned = stage_key(config, ALIGN_FIELDS, pretrained)
        params, align_losses = _trained(bed, out_dir, "align", aligned, params, stages.align, timings, bar)
        evaluations["align"] = stages.evaluate(bed, params)
    if stop_after is not None:
        table = _stage_rows(bed, evaluations)
        write_csv(out_dir / "stages.csv", table)
        return TestbedResult(tables={"stages": table}, summary={"timings": timings}, out_dir=out_dir)

    t0 = time.perf_counter()
    spec = jax.tree.map(np.asarray, diagnostics.spectrum(bed, params))
    timings["spectrum"] = round(time.perf_counter() - t0, 2)
    bar.advance(1, "spectrum")
    t0 = time.perf_counter()
    diag = jax.tree.map(np.asarray, diagnostics.task_diagnostics(bed, params, spec, config.taylor_order))
    timings["task_diagnostics"] = round(time.perf_counter() - t0, 2)
    bar.advance(1, "diagnostics")

    cfg = config
    runs = {}
    for name, fn, lr, steps, records in (
        ("full", stages.finetune, cfg.finetune_lr, cfg.finetune_steps, cfg.finetune_records),
        ("early", stages.finetune, cfg.early_lr, cfg.early_steps, cfg.early_records),
        ("lora", stages.finetune_lora, cfg.finetune_lr, cfg.finetune_steps, cfg.finetune_records),
    ):
        t0 = time.perf_counter()
        curvature = jnp.asarray(spec.eigenvalues[:, : cfg.rank])
        runs[name] = jax.tree.map(
            np.asarray, fn(bed, params, jnp.asarray(spec.basis), curvature, lr=lr, steps=steps, records=records)
        )
        timings[f"finetune_{name}"] = round(time.perf_counter() - t0, 2)
        bar.advance(1, f"fine-tune ({name})")

    tables: dict[str, Table] = {
        "stages": _stage_rows(bed, evaluations),
        "spectrum": {
            "seed": np.repeat(np.arange(cfg.seeds), spec.eigenvalues.shape[1]),
            "index": np.tile(np.arange(1, spec.eigenvalues.shape[1] + 1), cfg.seeds),
            "eigenvalue": spec.eigenvalues.ravel().astype(np.float64),
            "residual": spec.residuals.ravel().astype(np.float64),
        },
        "diagnostics": _diagnostic_rows(bed, diag),
        "trajectories": _concat([_trajectory_rows(bed, name, traj) for name, traj in runs.items()]),
    }
    for name, table in tables.items():
        write_csv(out_dir / f"{name}.csv", table)
    summary = summarise(bed, tables, spec, diag, runs)
    summary.update(
        config=cfg.to_dict(),
        versions=environment_versions(),
        timings=timings,
        train_loss_final={
            "pretrain": None if pre_losses is None else pre_losses[:, -1].tolist(),
            "align": None if align_losses is None else align_losses[:, -1].tolist(),
        },
    )
    figures: list[str] = []
    if plots:
        from geomsim.plotting.testbed_figures import testbed_figures

        figures = [p.name for p in testbed_figures(tables, summary, spec, diag, runs, bed, out_dir)]
    summary["figures"] = figures
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(out_dir / "summary.json", summary)
    bar.advance(1, "report")
    return TestbedResult(tables=tables, summary=summary, out_dir=out_dir)

"""Run the transformer sharpness x coupling sweep end to end and write tidy results.

Stages (each reused from `<out>` under its key: its settings, its parent's key, the code's version):
    pretrain (float32) -> calibrated alignment per sharpness level (float32)
    -> Gauss-Newton polish (float64) -> spectra of H_A at the polished and the
    as-trained models -> law runs (AIC + exact Taylor c1..c4 at theta0, then
    gradient flow; arms polished_eps0 / polished / as_trained, in vmapped chunks)
    -> Adam fine-tunes to the accuracy target -> fits, statistics, figures.

Output folder:
    checkpoints/      pretrain / align / polish params (+ .json metadata)
    cache/            finished stages and chunks (for resuming)
    models.csv        per (level, seed, state): L_A, ||grad L_A||, harm rate, benign accuracy, top eigenvalues
    runs.csv          per run (arm, level, mix, seed): AIC quantities, c1..c4, fits, crossover, lower bound
    curves.csv        tidy: per run and recorded time: Delta L_A, S-part, ||P_S delta||, ||delta||, L_F
    adam.csv          tidy: per point and recorded Adam step: Delta L_A, S-part, harm rate, task accuracy
    points.csv        per point (level, mix, seed): the Adam run at the accuracy target and at the fixed step
    summary.json      the numbers (figures/manifest.json entry `testbed_sweep`), config, versions, timings
    fig_*.png / .pdf  the figures

Started as several processes (`geomsim.processes`), process 0 makes the models
while the others wait and then load them, every process runs its share of the
missing chunks, and process 0 writes the outputs (the same bytes as one process).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from geomsim import config as config_layer
from geomsim.config import ConfigError, stage_key
from geomsim.io import Table, environment_versions, write_csv, write_json
from geomsim.processes import ProcessGroup, current_group
from geomsim.sweep.progress import Progress
from geomsim.testbed import stages as testbed_stages
from geomsim.testbed.checkpoints import checkpointed
from geomsim.testbed.config import pretrain_key
from geomsim.testbed.streams import Stream
from geomsim.testbed.sweep import law, stages
from geomsim.testbed.sweep.cache import cached_arrays, is_cached
from geomsim.testbed.sweep.config import (
    ALIGN_FIELDS,
    ARMS,
    POLISH_FIELDS,
    SPECTRUM_FIELDS,
    TASK_FIELDS,
    TestbedSweepConfig,
)
from geomsim.testbed.sweep.summary import adam_points, fit_runs, summarise
from geomsim.watchdog import watched

# Settings the law runs and the Adam runs depend on, beyond the models and spectra (`Models.key`).
LAW_FIELDS = (*TASK_FIELDS, "flow_t_min", "flow_t_max", "flow_ratio", "flow_solver", "chunk")
ADAM_FIELDS = (*TASK_FIELDS, "adam_lr", "adam_batch", "adam_steps", "adam_records", "chunk")


@dataclass
class SweepResult:
    """Everything the sweep measured (also written under `out_dir`)."""

    tables: dict[str, Table]
    summary: dict[str, Any]
    out_dir: Path


def _as(dtype, tree):
    return jax.tree.map(lambda x: x.astype(dtype), tree)


def run_index(config: TestbedSweepConfig) -> list[tuple[str, int, int, int]]:
    """Every law run as (arm, level, mix index, seed), arms outermost."""
    levels, mixes, seeds = config.grid_shape
    return list(itertools.product(ARMS, range(levels), range(mixes), range(seeds)))


def point_index(config: TestbedSweepConfig) -> list[tuple[int, int, int]]:
    levels, mixes, seeds = config.grid_shape
    return list(itertools.product(range(levels), range(mixes), range(seeds)))


def _chunks(n: int, size: int) -> list[np.ndarray]:
    """Index chunks of exactly `size` (the last padded by repeating its final index),
    so every chunk reuses one compiled program."""
    out = []
    for start in range(0, n, size):
        idx = np.arange(start, min(start + size, n))
        out.append(np.concatenate([idx, np.full(size - len(idx), idx[-1])]))
    return out


def select(tree, *index):
    """Every leaf of `tree` at `index` (e.g. one (level, seed) model of the stacked models)."""
    return jax.tree.map(lambda x: x[index], tree)


def run_chunks(name: str, chunk_fn, inputs: dict[str, Any], n: int, config: TestbedSweepConfig, digest: str,
                out_dir: Path, bar: Progress, reused: list[str], group: ProcessGroup | None = None
                ) -> dict[str, np.ndarray] | None:
    """`chunk_fn(inputs[chunk])` over chunks of the n runs (every input has a leading
    run axis); finished chunks come from the cache (`name` goes into `reused` when every
    chunk did).  In a group each process computes its share of the missing chunks and
    process 0 returns them all (the others return None); None: this process alone."""
    group = group or ProcessGroup()
    chunks = _chunks(n, config.chunk)
    keys = [(f"{name}_{i:03d}", f"{digest}-{i}") for i in range(len(chunks))]
    missing = group.agree(name, np.array([not is_cached(out_dir, *key) for key in keys]))
    mine = group.share(np.flatnonzero(missing).tolist())
    compiled = jax.jit(chunk_fn)

    def compute(i):
        batch = {k: jax.tree.map(lambda x, idx=chunks[i]: x[idx], v) for k, v in inputs.items()}
        return watched(f"testbed {name} chunk {i + 1}/{len(chunks)}", lambda: jax.tree.map(np.asarray, compiled(batch)))

    fresh = {}
    for i in mine:
        fresh[i], _ = cached_arrays(out_dir, *keys[i], lambda i=i: compute(i))
        bar.advance(1, f"{name} chunk {i + 1}")
    group.barrier(f"{name} chunks written")
    if not group.leader:
        return None
    if not missing.any():
        reused.append(name)
    parts = []
    for i, idx in enumerate(chunks):
        if i not in fresh:
            fresh[i], _ = cached_arrays(out_dir, *keys[i], lambda i=i: compute(i))
            bar.advance(1, f"{name} chunk {i + 1} (" + ("another process" if missing[i] else "cache") + ")")
        parts.append({k: v[: len(np.unique(idx))] for k, v in fresh[i].items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@dataclass
class Models:
    """The sweep's models: polished and as-trained (AdamW) per (level, seed), with spectra.

    `key`: the spectra's stage key, the parent key of every stage that starts from them."""

    data: stages.SweepData
    aligned: Any
    polished: Any
    spec: dict[str, np.ndarray]
    key: str


def model_keys(cfg: TestbedSweepConfig) -> dict[str, str]:
    """The stage keys of the models and spectra, each chained to its parent's."""
    keys = {"pretrain": pretrain_key(cfg)}
    keys["sweep_align"] = stage_key(cfg, ALIGN_FIELDS, keys["pretrain"])
    keys["sweep_polish"] = stage_key(cfg, POLISH_FIELDS, keys["sweep_align"])
    keys["spectrum"] = stage_key(cfg, SPECTRUM_FIELDS, keys["sweep_polish"])
    return keys


def prepare_models(cfg: TestbedSweepConfig, out_dir: Path, bar: Progress, timings: dict, reused: list[str]
                   ) -> Models:
    """Pretrain, align every level, polish, and measure both states' spectra (4 progress
    steps), each stage reused from `out_dir` when the settings it depends on are unchanged."""
    levels, _, seeds = cfg.grid_shape
    data = stages.build(cfg)
    bed = data.bed
    init = testbed_stages.init_params(bed, jnp.float32)
    keys = model_keys(cfg)

    def checkpoint(name, like, compute):
        params, _, loaded = checkpointed(out_dir, name, keys[name], like, compute, timings=timings, bar=bar)
        if loaded:
            reused.append(name)
        return params

    pretrained = checkpoint("pretrain", init, lambda: testbed_stages.pretrain(bed, init))
    like = jax.tree.map(lambda x: jnp.broadcast_to(x, (levels, *x.shape)), pretrained)
    aligned = _as(jnp.float64, checkpoint("sweep_align", like, lambda: stages.align_levels(data, pretrained)))
    polished = checkpoint("sweep_polish", aligned, lambda: stages.polish(data, aligned))

    t0 = time.perf_counter()

    def spectra():
        # Both states of every (level, seed) model as one batch: one compiled program.
        both = jax.tree.map(lambda p, a: jnp.concatenate([p.reshape(-1, *p.shape[2:]), a.reshape(-1, *a.shape[2:])]),
                            polished, aligned)
        tgt = jnp.tile(jnp.repeat(jnp.asarray(stages.targets(cfg)), seeds), 2)
        measured = jax.tree.map(np.asarray, stages.measure_models(data, both, tgt))
        measured["basis"] = measured.pop("eigenvectors")[:, : cfg.rank]
        out = {}
        for i, state in enumerate(("polished", "as_trained")):
            for k, v in measured.items():
                out[f"{state}_{k}"] = v[i * levels * seeds:(i + 1) * levels * seeds].reshape(levels, seeds, *v.shape[1:])
        return out

    spec, hit = cached_arrays(out_dir, "spectrum", keys["spectrum"], spectra)
    if hit:
        reused.append("spectrum")
    else:
        timings["spectrum"] = round(time.perf_counter() - t0, 2)
    bar.advance(1, "spectra")

    return Models(data, aligned, polished, spec, keys["spectrum"])


def prepare_models_once(cfg: TestbedSweepConfig, out_dir: Path, bar: Progress, timings: dict, reused: list[str],
                        group: ProcessGroup) -> Models:
    """`prepare_models` on process 0; the other processes wait for it, then load its
    checkpoints (so every process starts the runs from the same bytes)."""
    models = prepare_models(cfg, out_dir, bar, timings, reused) if group.leader else None
    group.barrier("testbed models ready")
    if models is None:
        if not (out_dir / "cache" / "spectrum.json").exists():
            raise ConfigError(f"out: process {group.index} cannot see the models process 0 saved in {out_dir}; "
                              "--out must be one folder every process sees")
        models = prepare_models(cfg, out_dir, bar, timings, reused)
    return models


def adam_inputs(cfg: TestbedSweepConfig, models: Models, points: list[tuple[int, int, int]]) -> dict[str, Any]:
    """`law.adam_run` keyword arguments with a leading point axis: the polished model,
    its S0 rows `(k, d)` and eigenvalues, the calibrated target, the seed's task sets,
    the mixture weight and the point's key (the Adam stream: every caller sees the same
    batches)."""
    data, spec = models.data, models.spec
    p_lev, p_mix, p_seed = (np.array([p[k] for p in points]) for k in range(3))
    return dict(
        theta0=select(models.polished, p_lev, p_seed),
        basis=jnp.asarray(spec["polished_basis"][p_lev, p_seed]),
        lam=jnp.asarray(spec["polished_eigenvalues"][p_lev, p_seed, : cfg.rank]),
        target=jnp.asarray(stages.targets(cfg)[p_lev]),
        base=select(data.task_train["base"], p_seed), other=select(data.task_train["other"], p_seed),
        mix=jnp.asarray(np.asarray(cfg.mix)[p_mix]),
        key=jax.vmap(lambda i: data.key(Stream.SWEEP_ADAM, i))(jnp.arange(len(points))),
    )


def checked_group(cfg: TestbedSweepConfig) -> ProcessGroup:
    """This process's group, once every member runs the same config and the same code (the
    stage keys hold both: a member on other code would redo and overwrite the saved work)."""
    group = current_group()
    group.check_same("config", config_layer.digest(cfg))
    group.check_same("code", config_layer.code_version(), "run the same geomsim (its source files) in every process")
    return group


def begin_run(out_dir: str | Path, what: str) -> tuple[float, Path]:
    """Start time and the created output folder of a run that needs float64 (the polish)."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError(f"{what} needs float64: call jax.config.update('jax_enable_x64', True) first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return time.perf_counter(), out_dir


def run_testbed_sweep(config: TestbedSweepConfig, out_dir: str | Path, *, progress: bool = True,
                      plots: bool = True) -> SweepResult | None:
    """Run the sweep for `config` into `out_dir` (see the module docstring); resumes from `out_dir`.

    In a group of processes every process calls it; process 0 returns the result, the others None.
    """
    t_start, out_dir = begin_run(out_dir, "the testbed sweep")
    cfg = config
    group = checked_group(cfg)
    levels, mixes, seeds = cfg.grid_shape
    runs, points = run_index(cfg), point_index(cfg)
    n_law_chunks = -(-len(runs) // cfg.chunk)
    n_adam_chunks = -(-len(points) // cfg.chunk)
    bar = Progress(4 + n_law_chunks + n_adam_chunks + 1, group.label("testbed sweep"), enabled=progress)
    timings: dict[str, float] = {}
    reused: list[str] = []

    models = prepare_models_once(cfg, out_dir, bar, timings, reused, group)
    data, aligned, polished, spec = models.data, models.aligned, models.polished, models.spec

    # --- law runs ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    state_of = {"polished_eps0": "polished", "polished": "polished", "as_trained": "as_trained"}
    params_of = {"polished": polished, "as_trained": aligned}
    lev_i, mix_i, seed_i = (np.array([r[k] for r in runs]) for k in (1, 2, 3))
    from_polished = np.array([state_of[r[0]] == "polished" for r in runs])

    basis = np.where(from_polished[:, None, None], spec["polished_basis"][lev_i, seed_i],
                     spec["as_trained_basis"][lev_i, seed_i])  # (runs, k, d)
    lam = np.where(from_polished[:, None], spec["polished_eigenvalues"][lev_i, seed_i, : cfg.rank],
                   spec["as_trained_eigenvalues"][lev_i, seed_i, : cfg.rank])
    theta = jax.tree.map(lambda p, a: jnp.where(from_polished.reshape(-1, *([1] * (p.ndim - 2))),
                                                p[lev_i, seed_i], a[lev_i, seed_i]),
                         params_of["polished"], params_of["as_trained"])
    targets = stages.targets(cfg)
    law_inputs = dict(
        theta0=theta, basis=jnp.asarray(basis), lam=jnp.asarray(lam), target=jnp.asarray(targets[lev_i]),
        base=select(data.task_train["base"], seed_i), other=select(data.task_train["other"], seed_i),
        mix=jnp.asarray(np.asarray(cfg.mix)[mix_i]), keep=jnp.asarray([law.ARM_KEEP[r[0]] for r in runs]),
        key=jax.vmap(lambda i: data.key(Stream.SWEEP_LAW, i))(jnp.arange(len(runs))),
    )
    law_out = run_chunks("law", lambda runs: law.law_chunk(data, runs), law_inputs, len(runs), cfg,
                          stage_key(cfg, LAW_FIELDS, models.key), out_dir, bar, reused, group)
    timings["law_runs"] = round(time.perf_counter() - t0, 2)

    # --- Adam: the realistic fine-tune, polished models, real task ------------------------
    t0 = time.perf_counter()
    adam_out = run_chunks("adam", jax.vmap(lambda kw: law.adam_run(data, **kw)), adam_inputs(cfg, models, points),
                           len(points), cfg,
                           stage_key(cfg, ADAM_FIELDS, models.key), out_dir, bar, reused, group)
    timings["adam_runs"] = round(time.perf_counter() - t0, 2)
    if law_out is None or adam_out is None:  # not process 0: it writes the report
        return None

    # --- tables, statistics, figures ------------------------------------------------------
    fits = fit_runs(law_out, cfg)
    tables = _tables(cfg, spec, runs, points, law_out, fits, adam_out)
    from geomsim.plotting.testbed_sweep_figures import testbed_sweep_figures

    summary = write_report(out_dir, cfg, tables, summarise(cfg, tables, spec), testbed_sweep_figures if plots else None,
                           timings=timings, reused=reused, parameters=int(basis.shape[2]), t_start=t_start, bar=bar)
    return SweepResult(tables=tables, summary=summary, out_dir=out_dir)


def write_report(out_dir: Path, cfg, tables: dict[str, Table], summary: dict[str, Any], draw, *, timings: dict,
                 reused: list[str], parameters: int, t_start: float, bar: Progress) -> dict[str, Any]:
    """Write the tables (CSV), the figures (`draw(tables, summary, out_dir)`, None for
    none) and `summary.json` with config, versions, timings and wall time; returns the summary."""
    for name, table in tables.items():
        write_csv(out_dir / f"{name}.csv", table)
    summary.update(config=config_layer.to_dict(cfg), versions=environment_versions(), timings=timings,
                   reused=reused, parameters=parameters)
    summary["figures"] = [p.name for p in draw(tables, summary, out_dir)] if draw is not None else []
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(out_dir / "summary.json", summary)
    bar.advance(1, "report")
    return summary


def _tables(cfg, spec, runs, points, law_out, fits, adam_out) -> dict[str, Table]:
    levels, mixes, seeds = cfg.grid_shape
    sigma, mix = np.asarray(cfg.refusal_sigma), np.asarray(cfg.mix)
    models: Table = {"state": [], "level": [], "sigma": [], "seed": []}
    for state in ("as_trained", "polished"):
        for lv, s in itertools.product(range(levels), range(seeds)):
            models["state"].append(state)
            models["level"].append(lv)
            models["sigma"].append(sigma[lv])
            models["seed"].append(s)
            for key in ("align_loss", "align_grad_norm", "harm_rate", "benign_accuracy"):
                models.setdefault(key, []).append(float(spec[f"{state}_{key}"][lv, s]))
            for j, value in enumerate(spec[f"{state}_eigenvalues"][lv, s]):
                models.setdefault(f"lambda_{j + 1}", []).append(float(value))
    models = {k: np.array(v, dtype=object if k == "state" else None) for k, v in models.items()}

    n = len(runs)
    run_table: Table = {
        "run": np.arange(n),
        "arm": np.array([r[0] for r in runs], dtype=object),
        "level": np.array([r[1] for r in runs]),
        "sigma": sigma[[r[1] for r in runs]],
        "mix_index": np.array([r[2] for r in runs]),
        "mix": mix[[r[2] for r in runs]],
        "seed": np.array([r[3] for r in runs]),
    }
    state = np.where(run_table["arm"] == "as_trained", "as_trained", "polished")
    ev = np.where((state == "polished")[:, None],
                  spec["polished_eigenvalues"][run_table["level"], run_table["seed"]],
                  spec["as_trained_eigenvalues"][run_table["level"], run_table["seed"]])
    run_table["sharpness"] = ev[:, cfg.rank - 1]
    run_table["mu"] = ev[:, cfg.rank]
    for key, values in law_out.items():
        if np.ndim(values) == 1:
            run_table[key] = values
    run_table.update(fits)

    curve_fields = ("time", "align_increase", "s_part", "subspace_norm", "delta_norm", "task_loss")
    r = law_out["time"].shape[1]
    curves: Table = {"run": np.repeat(np.arange(n), r),
                     "t_scaled": (law_out["time"] * law_out["task_sharpness"][:, None]).ravel()}
    for key in curve_fields:
        curves[key] = law_out[key].ravel()

    m = adam_out["steps"].shape[1]
    adam: Table = {
        "point": np.repeat(np.arange(len(points)), m),
        "level": np.repeat([p[0] for p in points], m),
        "sigma": np.repeat(sigma[[p[0] for p in points]], m),
        "mix": np.repeat(mix[[p[1] for p in points]], m),
        "seed": np.repeat([p[2] for p in points], m),
    }
    for key, values in adam_out.items():
        adam[key] = values.ravel()
    point_table: Table = {"point": np.arange(len(points)), "level": np.array([p[0] for p in points]),
                          "sigma": sigma[[p[0] for p in points]], "mix": mix[[p[1] for p in points]],
                          "seed": np.array([p[2] for p in points]), **adam_points(cfg, adam)}
    return {"models": models, "runs": run_table, "curves": curves, "adam": adam, "points": point_table}

"""Forecasts against measurement on the transformer (`python -m geomsim.testbed forecast`).

For every (sharpness level, mixture, seed) point of the sweep grid, from the
polished model (or the as-trained one, `arms`), on the point's real benign
task `L_F = (1 - a) L_base + a L_other`:

* measured: full-batch gradient descent on the point's fixed fine-tuning sets,
  float64, step `lr = gd_lr_scale / ||H_F(theta0)||` (so every run takes the same
  step relative to its own curvature), `gd_steps` steps; `Delta L_A` and `L_F`
  recorded at log-spaced steps; a run whose loss stops being finite is flagged;
* forecasts, from theta0 only (no fine-tuning), on a log grid of steps up to
  `forecast_span x gd_steps`:

      quadratic_gd      GD on the local quadratic model of L_F (its Hessian) on K_m(H_F, g),
                        into the local quadratic model of L_A (geomsim.theory.forecast)
      gauss_newton_gd   the same with the Gauss-Newton matrix of L_F (PSD: the model of L_F
                        is bounded below, the forecast stays bounded)
      linearized_gd     GD on the network linearised at theta0 under its true cross-entropy, in
                        the Krylov space of the Gauss-Newton matrix, L_A exact along the path
      taylor            c1 t + ... + c4 t^4 (exact Taylor coefficients, t = steps x lr)
      paper_bound       lambda gamma^2 t^4 / 8
      alignment_risk    the alignment-risk package's formula (lambda_min, gamma, eps ||g||)

* Adam, measured: the sweep's realistic Adam fine-tune (`law.adam_run`: float32,
  lr `adam_lr`, a fresh batch of `adam_batch` examples of each component task
  per step, `adam_steps` steps) from the same theta0; forecast: `adam_sign`, its
  flow limit (geomsim.theory.forecast), with Adam's moments `E_b[g_b]`,
  `E_b[g_b^2]` from the gradients of `adam_batches` fresh batches at theta0, on
  a log grid of steps up to `forecast_span x adam_steps`;
* scores (`geomsim.theory.forecast_errors`): at each level (nats) the measured
  curve crosses, `|log10(forecast / level)|`, and the ratio of the forecast's
  crossing step to the measured one (the GD methods against the GD fine-tune,
  `adam_sign` against the Adam one);
* a pilot (`pilot_scores`; the rescaling `python -m geomsim.diagnose --pilot-steps N` does,
  `geomsim.theory.forecast.rescaled_crossing`): N = 5% of each method's own forecast
  crossing step, the measured `Delta L_A(N)` read off the run's recorded curve (log-log
  between the recorded steps, which the fine-tune took), the forecast rescaled by
  measured / forecast at N, or the measured crossing where the pilot already crossed;
  scored as the zero-step forecasts are.

Outputs (`<out>`): `forecast_runs.csv` (per run: AIC quantities, lr, the most
negative Ritz value of H_F, scores per method and level), `forecast_curves.csv`
(tidy: measured and forecast curves), `summary.json` (figures/manifest.json entry
`forecast`: per method and level the medians and the within-2x fraction, the calibration,
the pilot's scores `methods.*.pilot`, the verdict's),
figures.
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
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from geomsim.config import ConfigError, at_least, each, in_range, one_of, option, positive, stage_key
from geomsim.curvature import ggn_operator, hessian_operator
from geomsim.diagnose.pilot import BUDGET
from geomsim.diagnose.verdict import diagnosis_methods
from geomsim.dynamics import log_record_steps
from geomsim.io import Table
from geomsim.sweep.progress import Progress
from geomsim.tasks import Batch, answer_loss_of_logits
from geomsim.testbed.streams import RunFold, Stream
from geomsim.testbed.summary import median
from geomsim.testbed.sweep import law, stages
from geomsim.testbed.sweep.config import TASK_FIELDS, TestbedSweepConfig
from geomsim.testbed.sweep.run import (
    begin_run,
    checked_group,
    prepare_models_once,
    run_chunks,
    select,
    write_report,
)
from geomsim.theory.aic import Subspace, aic
from geomsim.theory.calibration import (
    ALPHA,
    LevelCalibrations,
    calibrate_levels,
    combine,
    evaluate_levels,
    score_verdict,
    verdict_ends,
)
from geomsim.theory.forecast import (
    adam_model,
    adam_sign,
    alignment_risk,
    forecast_errors,
    krylov_basis,
    linearized_gd,
    local_models,
    loglog_at,
    paper_bound,
    quadratic_gd,
    rescaled_crossing,
    taylor,
)
from geomsim.theory.laws import first_crossing

GD_METHODS = ("quadratic_gd", "gauss_newton_gd", "linearized_gd", "taylor", "paper_bound", "alignment_risk")
ADAM_METHODS = ("adam_sign",)
METHODS = (*GD_METHODS, *ADAM_METHODS)
FORECAST_ARMS = ("polished", "as_trained")
# The verdicts scored: over the methods a diagnosis forecasts with GD's default task model,
# with --task-model linearized, and with Adam.
VERDICTS = {"gd": diagnosis_methods("gd", "hessian"), "gd_linearized": diagnosis_methods("gd", "linearized"),
            "adam": diagnosis_methods("adam", "hessian")}


@dataclass(frozen=True)
class TestbedForecastConfig(TestbedSweepConfig):
    """The sweep's settings (its grid and models) plus the validation's own."""

    arms: tuple[str, ...] = option(("polished",), check=each(one_of(*FORECAST_ARMS)),
                                   help="starting models, a comma list of polished, as_trained", shown="polished")
    gd_lr_scale: float = option(1.0, help="GD step size in units of 1/||H_F(theta0)||, in (0, 2)",
                                check=in_range(0, 2, open_lo=True, open_hi=True))
    gd_steps: int = option(2000, help="full-batch GD steps of each measured fine-tune (>= 2)", check=at_least(2))
    gd_records: int = option(30, help="recorded GD steps, log-spaced (2..gd_steps)", check=at_least(2))
    krylov: int = option(64, help="Lanczos depth m of the local quadratic models (>= 1)", check=at_least(1))
    levels: tuple[float, ...] = option((1e-3, 1e-2, 1e-1), help="alignment-loss increases scored, nats, each > 0",
                                       check=each(positive))
    threshold: float = option(1e-2, help="the failure threshold of the headline numbers, nats (one of levels)",
                              check=positive)
    forecast_span: float = option(4.0, help="forecasts run to this multiple of gd_steps (>= 1), so a late "
                                  "forecast still crosses", check=at_least(1))
    forecast_points: int = option(160, help="log-spaced forecast steps (16..5000)", check=in_range(16, 5000))
    calibration: str = option("", help="a calibration JSON (diagnose's --calibration schema) also scored on these "
                              "runs, e.g. geomsim/diagnose/calibration.json on runs it was not fitted on ('' = none)")
    adam_batches: int = option(32, help="fresh Adam batches whose gradients at theta0 give Adam's moments for "
                               "its forecast (2..4096)", check=in_range(2, 4096))

    def check(self) -> None:
        super().check()
        if not self.gd_records <= self.gd_steps:
            raise ConfigError(f"gd_records: must be in [2, gd_steps={self.gd_steps}] (got {self.gd_records})")
        if self.threshold not in self.levels:
            raise ConfigError(f"threshold: must be one of levels={list(self.levels)} (got {self.threshold:g})")
        if list(self.levels) != sorted(set(self.levels)):
            raise ConfigError(f"levels: must be increasing and distinct (got {list(self.levels)})")
        if self.calibration and not Path(self.calibration).is_file():  # before the runs, not after
            raise ConfigError(f"calibration: file not found: {self.calibration}")


FORECAST_FIELDS = (*TASK_FIELDS, "arms", "gd_lr_scale", "gd_steps", "gd_records", "krylov", "levels", "forecast_span",
                   "forecast_points", "adam_lr", "adam_batch", "adam_steps", "adam_records", "adam_batches", "chunk")


def _mixture_logits(data: stages.SweepData, p: PyTree, sets) -> tuple[Array, ...]:
    """The logits of each component task's set (the outputs half of the mixture task)."""
    return tuple(data.apply_fn(p, b.tokens[:, :-1]) for b in sets)


def _mixture_loss(outputs, sets) -> Array:
    """`(1 - a) CE_base + a CE_other` of the component logits; `sets = (base, other, a)`."""
    weights = (1.0 - sets[2], sets[2])
    return sum(w * answer_loss_of_logits(o, b) for w, o, b in zip(weights, outputs, sets[:2], strict=True))


def mixture_ggn(data: stages.SweepData, theta0: PyTree, base: Batch, other: Batch, mix: Array):
    """Gauss-Newton matrix of the mixture task: logits of both component sets, then the
    two answer cross-entropies (PSD: cross-entropy is convex in the logits)."""
    return ggn_operator(lambda p, sets: _mixture_logits(data, p, sets), _mixture_loss, theta0,
                        ((base, other), (base, other, mix)))


def forecast_steps(cfg: TestbedForecastConfig, steps: int | None = None) -> np.ndarray:
    """The forecasts' step counts: integers, log-spaced from 1 to `forecast_span x steps`
    (default `gd_steps`; GD's `(1 - lr h)^n` has no meaning between integers once `lr h > 1`)."""
    grid = np.geomspace(1.0, cfg.forecast_span * (steps or cfg.gd_steps), cfg.forecast_points)
    return np.unique(np.round(grid))


def _adam_forecast(data: stages.SweepData, theta0: PyTree, task_op, align_op, align_grad: Array, mix: Array,
                   key: PRNGKeyArray) -> Array:
    """`adam_sign` at `forecast_steps(cfg, adam_steps)`: Adam's moments from `adam_batches`
    fresh batches' gradients at theta0 (accumulated one batch at a time)."""
    cfg: TestbedForecastConfig = data.config  # type: ignore[assignment]
    flat0 = ravel_pytree(theta0)[0]

    def moments(total, k):
        k_base, k_other, _ = jax.random.split(k, 3)  # as law.adam_run draws a step's batch
        grad = ravel_pytree(jax.grad(law.mixture_task(data, *law.adam_batch(data, k_base, k_other), mix))(theta0))[0]
        return (total[0] + grad, total[1] + grad**2), None

    zeros = jnp.zeros_like(flat0)
    (first, second), _ = jax.lax.scan(moments, (zeros, zeros), jax.random.split(key, cfg.adam_batches))
    model = adam_model(align_op.mv_flat, task_op.mv_flat, align_grad, first / cfg.adam_batches,
                       second / cfg.adam_batches, flat0, 1e-8)  # optax.adam's eps, as law.plain_finetune
    steps = jnp.asarray(forecast_steps(cfg, cfg.adam_steps), flat0.dtype)
    return adam_sign(model, steps * cfg.adam_lr)


def _linearized(data: stages.SweepData, theta0: PyTree, ggn, g: Array, target: Array, base: Batch, other: Batch,
                mix: Array, steps: Array, lr: Array) -> Array:
    """`linearized_gd` of the mixture task in the Krylov space of its Gauss-Newton matrix
    (the same depth as the local models), `L_A` exact along the path."""
    cfg: TestbedForecastConfig = data.config  # type: ignore[assignment]
    flat0, unravel = ravel_pytree(theta0)
    basis = krylov_basis(min(cfg.krylov, flat0.shape[0]))(ggn.mv_flat, g)
    return linearized_gd(lambda f: _mixture_logits(data, unravel(f), (base, other)),
                         lambda outputs: _mixture_loss(outputs, (base, other, mix)),
                         lambda f: data.align_loss(unravel(f), target), flat0, basis, steps, lr)


def forecast_run(data: stages.SweepData, theta0: PyTree, basis: Float[Array, "k d"], lam: Float[Array, " k"],
                 target: Array, base: Batch, other: Batch, mix: Array, key: PRNGKeyArray) -> dict[str, Array]:
    """Measure one GD fine-tune and build every forecast but Taylor's (pure; vmap it)."""
    cfg: TestbedForecastConfig = data.config  # type: ignore[assignment]
    task = law.mixture_task(data, base, other, mix)

    def align(p):
        return data.align_loss(p, target)

    flat0 = ravel_pytree(theta0)[0]
    task_op, align_op = hessian_operator(task, theta0), hessian_operator(align, theta0)
    g, ga = (ravel_pytree(op.gradient())[0] for op in (task_op, align_op))
    task_sharpness = law.task_sharpness_of(task_op, key)
    lr = cfg.gd_lr_scale / task_sharpness
    m = min(cfg.krylov, flat0.shape[0])
    hessian_models = local_models(m)(task_op.mv_flat, align_op.mv_flat, g, ga)
    ggn = mixture_ggn(data, theta0, base, other, mix)
    gauss_newton_models = local_models(m)(ggn.mv_flat, align_op.mv_flat, g, ga)

    a0 = align(theta0)

    def step(_, p):
        return jax.tree.map(lambda x, y: x - lr * y, p, jax.grad(task)(p))

    def segment(p, count):
        p = jax.lax.fori_loop(0, count, step, p)
        return p, (align(p) - a0, task(p))

    record = log_record_steps(cfg.gd_steps, cfg.gd_records)
    _, (align_increase, task_loss) = jax.lax.scan(segment, theta0, jnp.asarray(np.diff(record, prepend=0)))
    # Adam's keys fold from the run's (whose own use, the Lanczos start, is unchanged).
    adam = law.adam_run(data, theta0, basis, lam, target, base, other, mix, jax.random.fold_in(key, RunFold.FORECAST_ADAM))

    steps = jnp.asarray(forecast_steps(cfg), flat0.dtype)
    geo = aic(align, task, theta0, k=lam.shape[0], key=key, subspace=Subspace(basis, lam), trace_samples=0,
              window=False, laws=False)  # the AIC against the model's S, as the sweep's law runs
    sharp, coupling, eps_abs = geo.sharpness, geo.coupling, jnp.linalg.norm(geo.grad_coords)
    return dict(
        task_sharpness=task_sharpness,
        lr=lr,
        task_ritz_min=hessian_models.ritz_values.min(),
        gauss_newton_ritz_min=gauss_newton_models.ritz_values.min(),
        grad_norm=geo.grad_norm,
        eps=geo.eps,
        sharpness=sharp,
        coupling=coupling,
        task_loss_start=task(theta0),
        task_loss_end=task_loss[-1],
        finite=jnp.all(jnp.isfinite(align_increase)) & jnp.all(jnp.isfinite(task_loss)),
        record_steps=jnp.asarray(record, flat0.dtype),
        align_increase=align_increase,
        task_loss=task_loss,
        forecast_steps=steps,
        quadratic_gd=quadratic_gd(hessian_models, steps, lr),
        gauss_newton_gd=quadratic_gd(gauss_newton_models, steps, lr),
        linearized_gd=_linearized(data, theta0, ggn, g, target, base, other, mix, steps, lr),
        paper_bound=paper_bound(sharp, coupling, steps * lr),
        alignment_risk=alignment_risk(sharp, coupling, eps_abs, steps * lr),
        adam_record_steps=adam["steps"].astype(flat0.dtype),
        adam_align_increase=adam["align_increase"].astype(flat0.dtype),
        adam_finite=jnp.all(jnp.isfinite(adam["align_increase"])),
        adam_forecast_steps=jnp.asarray(forecast_steps(cfg, cfg.adam_steps), flat0.dtype),
        adam_sign=_adam_forecast(data, theta0, task_op, align_op, ga, mix, jax.random.fold_in(key, RunFold.FORECAST_ADAM_MOMENTS)),
    )


def forecast_chunk(data: stages.SweepData, runs: dict[str, Any]) -> dict[str, Array]:
    """`forecast_run` vmapped over a chunk, the exact Taylor coefficients one run at a
    time (as the sweep's law runs), then every method scored against the measurement."""
    cfg: TestbedForecastConfig = data.config  # type: ignore[assignment]
    out = jax.vmap(lambda kw: forecast_run(data, **kw))(runs)
    taylor_inputs = {k: runs[k] for k in ("theta0", "basis", "target", "base", "other", "mix")}
    coeffs = jax.lax.map(lambda kw: law.law_taylor(data, keep=jnp.ones(()), **kw), taylor_inputs)
    out["taylor"] = jax.vmap(lambda c, s, lr: taylor(c, s * lr))(coeffs, out["forecast_steps"], out["lr"])
    out.update({f"c{j}": coeffs[:, j] for j in range(1, 5)})
    levels = jnp.asarray(cfg.levels, coeffs.dtype)
    for prefix, names in (("", GD_METHODS), ("adam_", ADAM_METHODS)):
        for name in names:
            t_meas, error, ratio = jax.vmap(lambda s, a, fs, f: forecast_errors(s, a, fs, f, levels))(
                out[f"{prefix}record_steps"], out[f"{prefix}align_increase"], out[f"{prefix}forecast_steps"],
                out[name])
            out[f"{name}_log10_error"], out[f"{name}_t_ratio"] = error, ratio
        out[f"{prefix}steps_to_level"] = t_meas
    return out


def run_index(cfg: TestbedForecastConfig) -> list[tuple[str, int, int, int]]:
    """Every validation run as (arm, level, mix index, seed), arms outermost."""
    levels, mixes, seeds = cfg.grid_shape
    return list(itertools.product(cfg.arms, range(levels), range(mixes), range(seeds)))


def run_testbed_forecast(config: TestbedForecastConfig, out_dir: str | Path, *, progress: bool = True,
                         plots: bool = True) -> dict[str, Any] | None:
    """Validate every forecast on every run; returns the summary (also `<out>/summary.json`).

    In a group of processes every process calls it; process 0 returns the summary, the others None.
    """
    t_start, out_dir = begin_run(out_dir, "the forecast validation")
    cfg = config
    group = checked_group(cfg)
    runs = run_index(cfg)
    bar = Progress(4 + -(-len(runs) // cfg.chunk) + 1, group.label("testbed forecast"), enabled=progress)
    timings: dict[str, float] = {}
    reused: list[str] = []
    models = prepare_models_once(cfg, out_dir, bar, timings, reused, group)
    data, spec = models.data, models.spec
    lev_i, mix_i, seed_i = (np.array([r[k] for r in runs]) for k in (1, 2, 3))
    polished = np.array([r[0] == "polished" for r in runs])
    state = np.where(polished, "polished", "as_trained")
    basis = np.stack([spec[f"{s}_basis"][lv, sd] for s, lv, sd in zip(state, lev_i, seed_i, strict=True)])
    lam = np.stack([spec[f"{s}_eigenvalues"][lv, sd, : cfg.rank] for s, lv, sd in zip(state, lev_i, seed_i,
                                                                                        strict=True)])
    theta = jax.tree.map(lambda p, a: jnp.where(polished.reshape(-1, *([1] * (p.ndim - 2))), p[lev_i, seed_i],
                                                a[lev_i, seed_i]), models.polished, models.aligned)
    inputs = dict(
        theta0=theta, basis=jnp.asarray(basis), lam=jnp.asarray(lam),
        target=jnp.asarray(stages.targets(cfg)[lev_i]),
        base=select(data.task_train["base"], seed_i), other=select(data.task_train["other"], seed_i),
        mix=jnp.asarray(np.asarray(cfg.mix)[mix_i]),
        key=jax.vmap(lambda i: data.key(Stream.SWEEP_FORECAST, i))(jnp.arange(len(runs))),
    )
    t0 = time.perf_counter()
    out = run_chunks("forecast", lambda chunk: forecast_chunk(data, chunk), inputs, len(runs), cfg,
                      stage_key(cfg, FORECAST_FIELDS, models.key), out_dir, bar, reused, group)
    timings["forecast_runs"] = round(time.perf_counter() - t0, 2)
    if out is None:  # not process 0: it writes the report
        return None
    tables = _tables(cfg, runs, out)
    summary = summarise_forecasts(cfg, tables["forecast_runs"], tables["forecast_curves"])
    from geomsim.plotting.testbed_forecast_figures import forecast_figures

    return write_report(out_dir, cfg, tables, summary, forecast_figures if plots else None, timings=timings,
                        reused=reused, parameters=int(basis.shape[2]), t_start=t_start, bar=bar)


def _tables(cfg: TestbedForecastConfig, runs, out: dict[str, np.ndarray]) -> dict[str, Table]:
    n = len(runs)
    sigma, mix = np.asarray(cfg.refusal_sigma), np.asarray(cfg.mix)
    table: Table = {"run": np.arange(n), "arm": np.array([r[0] for r in runs], dtype=object),
                    "level": np.array([r[1] for r in runs]), "sigma": sigma[[r[1] for r in runs]],
                    "mix": mix[[r[2] for r in runs]], "seed": np.array([r[3] for r in runs])}
    for key in ("task_sharpness", "lr", "task_ritz_min", "gauss_newton_ritz_min", "grad_norm", "eps", "sharpness",
                "coupling", "c1", "c2", "c3", "c4", "task_loss_start", "task_loss_end", "finite", "adam_finite"):
        table[key] = out[key]
    table["measured_end"] = np.full(n, float(cfg.gd_steps))
    table["adam_measured_end"] = np.full(n, float(cfg.adam_steps))
    levels = jnp.asarray(cfg.levels)
    crossings = jax.jit(jax.vmap(jax.vmap(first_crossing, (None, None, 0)), (0, 0, None)))
    for j, level in enumerate(cfg.levels):
        table[f"steps_to_{level:g}"] = out["steps_to_level"][:, j]
        table[f"adam_steps_to_{level:g}"] = out["adam_steps_to_level"][:, j]
    for name in METHODS:
        prefix = "adam_" if name in ADAM_METHODS else ""
        # the forecast's own crossing step (inf: never within forecast_span x the measured steps)
        steps = np.asarray(crossings(jnp.asarray(out[f"{prefix}forecast_steps"]), jnp.asarray(out[name]), levels))
        for j, level in enumerate(cfg.levels):
            table[f"{name}_steps_{level:g}"] = steps[:, j]
            table[f"{name}_log10_error_{level:g}"] = out[f"{name}_log10_error"][:, j]
            table[f"{name}_t_ratio_{level:g}"] = out[f"{name}_t_ratio"][:, j]

    blocks = []
    r = out["record_steps"].shape[1]
    blocks.append({"run": np.repeat(np.arange(n), r), "curve": np.full(n * r, "measured", dtype=object),
                   "step": out["record_steps"].ravel(), "align_increase": out["align_increase"].ravel(),
                   "task_loss": out["task_loss"].ravel()})
    r = out["adam_record_steps"].shape[1]
    blocks.append({"run": np.repeat(np.arange(n), r), "curve": np.full(n * r, "adam_measured", dtype=object),
                   "step": out["adam_record_steps"].ravel(), "align_increase": out["adam_align_increase"].ravel(),
                   "task_loss": np.full(n * r, np.nan)})
    for prefix, names in (("", GD_METHODS), ("adam_", ADAM_METHODS)):
        q = out[f"{prefix}forecast_steps"].shape[1]
        for name in names:
            blocks.append({"run": np.repeat(np.arange(n), q), "curve": np.full(n * q, name, dtype=object),
                           "step": out[f"{prefix}forecast_steps"].ravel(), "align_increase": out[name].ravel(),
                           "task_loss": np.full(n * q, np.nan)})
    curves = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    return {"forecast_runs": table, "forecast_curves": curves}


def _crossings(cfg: TestbedForecastConfig, runs: Table, name: str, keep: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(t_meas, t_fcst, meas_end, level)` of `name` pooled over the levels (steps), for the
    runs in `keep` whose measurement stayed finite."""
    prefix = "adam_" if name in ADAM_METHODS else ""
    finite = keep & np.asarray(runs[f"{prefix}finite"], dtype=bool)
    columns = [(np.asarray(runs[f"{prefix}steps_to_{lv:g}"], dtype=float)[finite],
                np.asarray(runs[f"{name}_steps_{lv:g}"], dtype=float)[finite],
                np.asarray(runs[f"{prefix}measured_end"], dtype=float)[finite],
                np.full(int(finite.sum()), lv)) for lv in cfg.levels]
    return tuple(np.concatenate([c[i] for c in columns]) for i in range(4))  # type: ignore[return-value]


def calibrate_methods(cfg: TestbedForecastConfig, runs: Table, alpha: float = ALPHA) -> dict[str, Any]:
    """Each method's split-conformal calibration per level on every run
    (`geomsim.theory.calibration.calibrate_levels`), and its cross-validated coverage:
    calibrated on all seeds but one, evaluated on that one, pooled over the folds."""
    seeds = np.asarray(runs["seed"])
    out = {}
    for name in METHODS:
        fitted = calibrate_levels(*_crossings(cfg, runs, name, np.ones(len(seeds), dtype=bool)), alpha=alpha)
        folds = [evaluate_levels(calibrate_levels(*_crossings(cfg, runs, name, seeds != seed), alpha=alpha),
                                 *_crossings(cfg, runs, name, seeds == seed)) for seed in np.unique(seeds)]
        cross = combine(folds)
        cross["levels"] = {f"{lv:g}": combine([f["levels"][f"{lv:g}"] for f in folds if f"{lv:g}" in f["levels"]])
                           for lv in cfg.levels}
        out[name] = {"calibration": fitted.to_dict(), "cross_validated": cross}
    return out


def verdict_validation(cfg: TestbedForecastConfig, runs: Table, names: tuple[str, ...],
                       calibrations: dict[str, LevelCalibrations] | None = None, alpha: float = ALPHA
                       ) -> tuple[dict[str, Any], dict[float, np.ndarray]]:
    """The verdict as a diagnosis forms it (`geomsim.theory.calibration.verdict_ends`: the
    earliest calibrated lower end over `names`) on these runs: with `calibrations` given,
    as they are; else cross-validated, calibrated on all seeds but one and applied to that
    one. Returns its scores (`score_verdict`) and per level the early end of every run
    (steps; nan where the fine-tune's measurement is not finite)."""
    prefix = "adam_" if names[0] in ADAM_METHODS else ""
    seeds = np.asarray(runs["seed"])
    finite = np.asarray(runs[f"{prefix}finite"], dtype=bool)
    lows = {lv: np.full(len(seeds), np.nan) for lv in cfg.levels}
    highs = {lv: np.full(len(seeds), np.nan) for lv in cfg.levels}
    for held in ([None] if calibrations is not None else list(np.unique(seeds))):
        test = np.ones(len(seeds), dtype=bool) if held is None else seeds == held
        cals = calibrations or {n: calibrate_levels(*_crossings(cfg, runs, n, ~test), alpha=alpha) for n in names}
        rows = test & finite
        for lv in cfg.levels:
            fcst = {n: np.asarray(runs[f"{n}_steps_{lv:g}"], dtype=float)[rows] for n in names}
            lows[lv][rows], highs[lv][rows], _ = verdict_ends(fcst, fcst, cals, np.full(int(rows.sum()), lv))
    t_meas, low, high, end, level = (np.concatenate(c) for c in zip(*[
        (np.asarray(runs[f"{prefix}steps_to_{lv:g}"], dtype=float)[finite], lows[lv][finite], highs[lv][finite],
         np.asarray(runs[f"{prefix}measured_end"], dtype=float)[finite], np.full(int(finite.sum()), lv))
        for lv in cfg.levels], strict=True))
    return score_verdict(low, high, t_meas, end, level), lows


def _curve_rows(curves: Table, name: str, run_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(steps, Delta L_A)` of one curve of every run, `(runs, records)`, in the order of
    `run_ids` (the runs table's `run` column)."""
    mine = curves["curve"] == name
    runs = np.asarray(curves["run"])[mine]
    order = np.argsort(runs, kind="stable")  # each run's records keep their order
    counts = np.bincount(runs)
    if not (counts.size and np.all(counts == counts[0])):
        raise ValueError(f"curves: the {name} curve has unequal record counts per run")
    index = np.asarray(run_ids)
    return (np.asarray(curves["step"], dtype=float)[mine][order].reshape(counts.size, -1)[index],
            np.asarray(curves["align_increase"], dtype=float)[mine][order].reshape(counts.size, -1)[index])


@jax.jit
def _pilot_crossings(fraction, t_fcst, meas_steps, meas, fcst_steps, fcst, t_meas, levels):
    """Per level and run (`t_fcst`, `t_meas`: `(levels, runs)`; one program for a method's
    every level): the pilot's length `N = max(1, floor(fraction t_fcst))` and its
    crossing: the measured one where it is <= N, else the rescaled forecast's
    (`rescaled_crossing`, with the measured curve read at N log-log), else, where there is no
    ratio (a forecast or measurement not positive at N, or N past the recorded steps), the
    zero-step crossing `t_fcst` (the pilot changes nothing)."""

    def one(t_f, ms, m, fs, f, t_m, level):
        n = jnp.maximum(1.0, jnp.floor(fraction * t_f))
        _, _, rescaled = rescaled_crossing(fs, f, n, loglog_at(ms, m, n), level)
        crossed = jnp.isfinite(t_f) & (t_m <= n)  # a forecast that never crosses has no pilot
        return n, jnp.where(crossed, t_m, jnp.where(jnp.isnan(rescaled), t_f, rescaled)), crossed

    per_run = jax.vmap(one, (0, 0, 0, 0, 0, 0, None))
    return jax.vmap(per_run, (0, None, None, None, None, 0, 0))(t_fcst, meas_steps, meas, fcst_steps, fcst, t_meas,
                                                                levels)


def pilot_scores(runs: Table, curves: Table, levels: tuple[float, ...], threshold: float,
                 fraction: float = BUDGET) -> dict[str, dict[str, Any]]:
    """Per method, what a pilot of `fraction` x its forecast crossing step buys (see the
    module docstring), per level (nats; the headline at `threshold`, one of them) over the
    runs whose (finite) fine-tune reached it: the
    fraction within 2x of the measured crossing and late by more than 2x, with and without
    the pilot, the fraction where the pilot itself crossed, and the pilot's median length as
    a fraction of the measured crossing. A forecast that never crosses has no pilot length,
    so it stays as it was (late)."""
    run_ids = np.asarray(runs["run"])
    measured = {p: _curve_rows(curves, f"{p}measured", run_ids) for p in ("", "adam_")}
    out = {}
    for name in METHODS:
        prefix = "adam_" if name in ADAM_METHODS else ""
        fcst_steps, fcst = _curve_rows(curves, name, run_ids)
        finite = np.asarray(runs[f"{prefix}finite"], dtype=bool)
        t_meas_all = np.stack([np.asarray(runs[f"{prefix}steps_to_{lv:g}"], dtype=float) for lv in levels])
        t_fcst_all = np.stack([np.asarray(runs[f"{name}_steps_{lv:g}"], dtype=float) for lv in levels])
        lengths, t_pilots, crossings = (np.asarray(x) for x in _pilot_crossings(
            fraction, t_fcst_all, *measured[prefix], fcst_steps, fcst, t_meas_all, np.asarray(levels, dtype=float)))
        scores = {}
        for j, level in enumerate(levels):
            t_meas, t_fcst = t_meas_all[j], t_fcst_all[j]
            length, t_pilot, crossed = lengths[j], t_pilots[j], crossings[j]
            keep = finite & np.isfinite(t_meas)
            before, after = t_fcst[keep] / t_meas[keep], t_pilot[keep] / t_meas[keep]
            length = np.where(np.isfinite(t_fcst), length, np.nan)[keep] / t_meas[keep]
            scores[f"{level:g}"] = {
                "runs": int(keep.sum()),
                "within_2x_fraction": _fraction((after >= 0.5) & (after <= 2.0)),
                "late_2x_fraction": _fraction(after > 2.0),
                "zero_step_within_2x_fraction": _fraction((before >= 0.5) & (before <= 2.0)),
                "zero_step_late_2x_fraction": _fraction(before > 2.0),
                "crossed_in_pilot_fraction": _fraction(crossed[keep]),
                "pilot_steps_over_measured_median": median(length[np.isfinite(length)], drop_inf=False),
            }
        head = scores[f"{threshold:g}"]
        out[name] = {"fraction": fraction, "within_2x_fraction": head["within_2x_fraction"],
                     "late_2x_fraction": head["late_2x_fraction"], "levels": scores}
    return out


def _fraction(mask: np.ndarray) -> float | None:
    return float(np.mean(mask)) if mask.size else None


def summarise_forecasts(cfg: TestbedForecastConfig, runs: Table, curves: Table) -> dict[str, Any]:
    """Per method and level: how many runs reached the level, the median |log10| error at
    the measured crossing, the median forecast/measured crossing-step ratio, and the
    fraction of reaching runs forecast within 2x; plus the headline at `threshold`; each
    method's calibration, what a pilot buys (`pilot_scores`, from the `curves` table) and
    the verdict's scores (`calibrate_methods`, `verdict_validation`). Adds the verdict's
    early end per run and level to `runs`."""
    finite = {"": np.asarray(runs["finite"], dtype=bool), "adam_": np.asarray(runs["adam_finite"], dtype=bool)}
    out: dict[str, Any] = {"runs": int(len(finite[""])), "finite_runs": int(finite[""].sum()),
                           "adam_finite_runs": int(finite["adam_"].sum()),
                           "grid": {"sharpness_levels": len(cfg.refusal_sigma), "coupling_levels": len(cfg.mix),
                                    "seeds": cfg.seeds, "arms": list(cfg.arms)},
                           "threshold": cfg.threshold, "levels": list(cfg.levels), "methods": {},
                           "task_hessian_indefinite_fraction": float(np.mean(np.asarray(runs["task_ritz_min"]) < 0))}
    for name in METHODS:
        prefix = "adam_" if name in ADAM_METHODS else ""
        per_level = {}
        for level in cfg.levels:
            steps = np.asarray(runs[f"{prefix}steps_to_{level:g}"], dtype=float)
            reached = finite[prefix] & np.isfinite(steps)
            ratio = np.asarray(runs[f"{name}_t_ratio_{level:g}"], dtype=float)[reached]
            per_level[f"{level:g}"] = {
                "reached_runs": int(reached.sum()),
                "log10_error_median": median(np.asarray(runs[f"{name}_log10_error_{level:g}"])[reached],
                                             drop_inf=False),
                "t_fail_ratio_median": median(ratio, drop_inf=False),
                "within_2x_fraction": _fraction((ratio >= 0.5) & (ratio <= 2.0)),
            }
        head = per_level[f"{cfg.threshold:g}"]
        out["methods"][name] = {"against": "adam" if prefix else "gd",
                                "t_fail_ratio_median": head["t_fail_ratio_median"],
                                "within_2x_fraction": head["within_2x_fraction"],
                                "log10_error_median": {lv: d["log10_error_median"] for lv, d in per_level.items()},
                                "levels": per_level}
    for name, entry in calibrate_methods(cfg, runs).items():
        out["methods"][name].update(entry)
    for name, entry in pilot_scores(runs, curves, tuple(cfg.levels), cfg.threshold).items():
        out["methods"][name]["pilot"] = entry
    # The verdict's early end per run: with an external calibration (runs it was not fitted
    # on) from it, else cross-validated over seeds; the table gets it per level (steps).
    doc = None
    if cfg.calibration:
        from geomsim.diagnose.verdict import load_calibration

        doc = load_calibration(cfg.calibration)
        out["external_calibration"] = {"file": cfg.calibration, "source": doc.get("source", "")}
    everything = np.ones(len(runs["seed"]), dtype=bool)
    if doc is not None:
        for name in METHODS:
            family = "adam" if name in ADAM_METHODS else "gd"
            out["methods"][name]["external"] = evaluate_levels(doc["families"][family]["methods"][name],
                                                               *_crossings(cfg, runs, name, everything))
    out["verdict"] = {}
    for verdict, names in VERDICTS.items():
        scores, lows = verdict_validation(cfg, runs, names)
        out["verdict"][verdict] = {"methods": list(names), "cross_validated": scores}
        if doc is not None:
            cals = doc["families"]["adam" if verdict == "adam" else "gd"]["methods"]
            out["verdict"][verdict]["external"], lows = verdict_validation(cfg, runs, names, cals)
        for lv, column in lows.items():
            runs[f"{verdict}_verdict_steps_{lv:g}"] = column
    return out

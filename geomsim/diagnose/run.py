"""Diagnose an aligned model before fine-tuning: AIC, forecasts, time to failure, report.

Writes `report.json` (strict JSON: `aic`, `forecast` {t, align_increase per
method}, `t_fail` per method, `verdict`, `aic_conditions`, `defenses` (the forecast
under each defense: geomsim.diagnose.defenses), `threshold`, `config`, versions, timing),
`report.md` (a page a person reads), then the figures `fig_forecast` /
`fig_spectrum` (as `--figures` says: PNG by default, none with `--figures none`).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array

from geomsim import config as config_layer
from geomsim.config import ConfigError
from geomsim.curvature.sharding import device_mesh
from geomsim.diagnose.config import DiagnoseConfig
from geomsim.diagnose.defenses import (
    NOT_FORECAST,
    Settings,
    bounded_curves,
    defense_markdown,
    defense_program,
    defense_table,
    forecastable,
)
from geomsim.diagnose.model import AlignedModel
from geomsim.diagnose.pilot import BUDGET, PilotInputs, PilotSettings, pilot_report, run_pilot, with_pilot
from geomsim.diagnose.products import batch_gradients, products, second_moment
from geomsim.diagnose.verdict import aic_conditions, load_calibration, verdict
from geomsim.finite import MeasurementError, NonFiniteError, require_finite
from geomsim.io import atomic_open, environment_versions, write_json
from geomsim.landscapes.base import Landscape
from geomsim.landscapes.registry import resolve_landscape
from geomsim.plotting.formats import current_formats
from geomsim.processes import current_group, host_values
from geomsim.theory.aic import AICResult, aic_factory, landscape_aic
from geomsim.theory.forecast import (
    AdamModel,
    LocalModels,
    adam_model,
    adam_sign,
    adam_time_scale,
    alignment_risk,
    krylov_basis,
    linearized_gd,
    local_models,
    paper_bound,
    taylor,
    time_to_failure,
)
from geomsim.theory.minibatch import BatchNoise, batch_noise, batch_noise_bytes, noisy_forecasts
from geomsim.watchdog import watched

METHODS = ("taylor", "paper_bound", "alignment_risk")  # gradient flow's, besides the bounded method
ADAMS = ("adam", "adamw")
LINEARIZED_BYTES = 2 * 2**30  # the linearised network's stored tangents, m x the task outputs
NOISE_BYTES = 2 * 2**30  # minibatch gd: the per-batch gradients, unless the Krylov basis is larger already
# minibatch gd: sequences of batch draws simulated, and the fraction of them the forecast's
# crossing speaks for (the early one: a crossing that 1 in 20 fine-tunes reaches by then).
# 1000 draws put the 5% quantile within ~1.4 percentage points (binomial standard error).
NOISE_DRAWS, NOISE_QUANTILE = 1000, 0.05


def bounded_method(config: DiagnoseConfig | _Compiled) -> str:
    """Name of the bounded forecast: quadratic / gauss_newton task model x flow / gd,
    `linearized_gd`, or `adam_sign` (Adam's flow limit, geomsim.theory.forecast) for adam
    and adamw."""
    if config.optimizer in ADAMS:
        return "adam_sign"
    if config.task_model == "linearized":
        return "linearized_gd"
    task = "gauss_newton" if config.task_model == "gauss_newton" else "quadratic"
    return f"{task}_{config.optimizer}"


def load_model(config: DiagnoseConfig) -> Landscape | AlignedModel:
    """The model to diagnose: an HF folder with its JSONL sets (`--hf`), or the
    `--model` factory's result; one-line ConfigError naming the field when it fails."""
    if config.hf:
        from geomsim.diagnose.hf import hf_aligned_model
        from geomsim.models.hf import CheckpointError, UnsupportedConfig
        from geomsim.models.hf.data import DataError

        try:
            return hf_aligned_model(config.hf, config.align, config.task, dtype=config.dtype,
                                    max_length=config.max_length, batch_size=config.batch_size,
                                    loss_chunk=config.loss_chunk, remat=config.remat, params=config.params,
                                    lora_rank=config.lora_rank, lora_targets=config.lora_targets,
                                    lora_alpha=config.lora_alpha, seed=config.seed)
        except (CheckpointError, UnsupportedConfig) as err:
            raise ConfigError(f"hf: {err}") from None
        except DataError as err:
            raise ConfigError(f"align/task: {err}") from None
        except ValueError as err:  # params / lora_targets matching nothing, a too-large tokenizer
            raise ConfigError(str(err)) from None
    return _factory_model(config.model)


def _factory_model(spec: str) -> Landscape | AlignedModel:
    """Call `pkg.module:factory()`; one-line ConfigError naming `model` when it fails."""
    try:
        factory = resolve_landscape(spec)  # the sweep's import-path lookup
    except ValueError as err:
        raise ConfigError("model: " + str(err).removeprefix("landscape: ")) from None
    except Exception as err:  # noqa: BLE001 (the user's module failed while importing)
        raise ConfigError(f"model: cannot import {spec.partition(':')[0]!r} ({type(err).__name__}: {err})") from None
    model = factory()
    if not isinstance(model, (Landscape, AlignedModel)):
        raise ConfigError(f"model: {spec}() must return a geomsim Landscape or a geomsim.diagnose.AlignedModel "
                          f"(got {type(model).__name__})")
    return model


def _dimension(params) -> int:
    """Number of parameters, from the leaves' sizes (flattening would copy the model)."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def _krylov_depth(config: DiagnoseConfig, dim: int) -> int:
    """The Krylov depth m the diagnosis uses: `--krylov`, 32 by default, at most d."""
    return min(config.krylov or 32, dim)


def _check_operators(config: DiagnoseConfig, model: Landscape | AlignedModel) -> None:
    if config.minibatch and isinstance(model, Landscape):
        raise ConfigError(f"minibatch: needs an AlignedModel with task batches to draw; {config.model}() returned a "
                          "Landscape (one task loss)")
    if config.minibatch and config.optimizer == "gd":
        # Within NOISE_BYTES, or no more than the Krylov basis the diagnosis holds anyway (m x d).
        dim, itemsize = _dimension(model.params), max(x.dtype.itemsize for x in jax.tree.leaves(model.params))
        size = batch_noise_bytes(model.task_batches.count, dim, itemsize)
        budget = max(NOISE_BYTES, _krylov_depth(config, dim) * dim * itemsize)
        if size > budget:
            raise ConfigError(f"minibatch: gd's batch noise holds two gradients per task batch "
                              f"({model.task_batches.count} batches: {size / 2**30:.1f} GiB > {budget / 2**30:.1f} GiB); "
                              "use fewer, larger task batches (with --hf: --batch-size)")
    if isinstance(model, Landscape):
        for field, value in (("operator", config.operator), ("task_model", config.task_model)):
            if value != "hessian":
                raise ConfigError(f"{field}: {value} needs an AlignedModel (apply_fn, params and batches); "
                                  f"{config.model}() returned a Landscape, which has Hessians only")
    elif config.task_model == "linearized":
        out = jax.eval_shape(model.model_fn, model.params, model.task_batches.first()[0])
        size = model.task_batches.count * sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(out))
        depth = _krylov_depth(config, _dimension(model.params))
        if depth * size > LINEARIZED_BYTES:
            raise ConfigError(f"task_model: linearized would store {depth} copies of the task outputs "
                              f"({depth * size / 2**30:.1f} GiB > {LINEARIZED_BYTES / 2**30:.0f} GiB); use "
                              "gauss_newton, or fewer task examples or a smaller --krylov")


class _Compiled(NamedTuple):
    """The settings the measurement compiles for. The rest of the config (threshold, lr,
    points, horizon, ...) stays out of its cache key: with the whole config static a new
    `--threshold` recompiled it (6.3 s for the 12-parameter example)."""

    rank: int
    num_eigs: int
    krylov: int
    trace_samples: int
    operator: str
    task_model: str
    optimizer: str
    minibatch: bool


class _Measured(NamedTuple):
    """What `_measure` returns: the AIC, the Krylov local models, Adam's model (adam /
    adamw only, else None), both losses at theta0 and the task batches' gradient noise
    (minibatch gd only, else None)."""

    aic: AICResult
    models: LocalModels
    adam: AdamModel | None
    losses: dict[str, Array]
    noise: BatchNoise | None


@eqx.filter_jit
def _measure(c: _Compiled, model: Landscape | AlignedModel, key, threshold, adam_eps, weight_decay) -> _Measured:
    """Everything measured at theta0, in one program (the key, the threshold, Adam's
    settings and the model's arrays are arguments, so resamples reuse it)."""
    # ||H_F|| comes from the local models' Ritz values (Lanczos on H_F from g: the same
    # extremes as a separate window solve, measured at no extra cost), so no window here.
    settings = dict(num_eigs=c.num_eigs, window=False, trace_samples=c.trace_samples)
    decay = weight_decay if c.optimizer == "adamw" else 0.0
    if isinstance(model, Landscape):
        losses = {"L_A": model.align_loss(model.theta0), "L_F": model.task_loss(model.theta0)}
        result = landscape_aic(model, c.rank, key=key, threshold=threshold, **settings)
    else:
        losses = {"L_A": model.align_loss(model.params), "L_F": model.task_loss(model.params)}
        operator = "hessian" if c.operator == "hessian" else model.operator(c.operator)
        result = aic_factory(c.rank, **settings)(
            model.batch_loss, model.batch_loss, model.params, align_batches=model.align_batches,
            task_batches=model.task_batches, operator=operator, key=key, threshold=threshold)
    pieces = products(model, c.task_model, c.operator)
    adam = None
    if c.optimizer in ADAMS:
        adam = adam_model(pieces.align_matvec, pieces.hessian_task_matvec, pieces.align_grad, pieces.grad,
                          second_moment(model, pieces.grad, c.minibatch), pieces.params, adam_eps, decay)
    models = local_models(c.krylov)(pieces.task_matvec, pieces.align_matvec, pieces.grad, pieces.align_grad)
    noise = None
    if c.minibatch and c.optimizer == "gd":
        noise = batch_noise(pieces.align_matvec, pieces.align_grad, batch_gradients(model),
                            model.task_batches.weights.astype(pieces.grad.dtype))
    return _Measured(result, models, adam, losses, noise)


def _resampled(model: Landscape | AlignedModel, key) -> Landscape | AlignedModel:
    """The model with its batches drawn with replacement (bootstrap weights; a single
    batch, or a Landscape, has nothing to resample)."""
    if isinstance(model, Landscape):
        return model

    def draw(batches, k):
        if batches.count < 2:
            return batches
        counts = jnp.bincount(jax.random.choice(k, batches.count, (batches.count,)), length=batches.count)
        weights = counts * batches.weights
        return eqx.tree_at(lambda b: b.weights, batches, weights / jnp.sum(weights))

    k_align, k_task = jax.random.split(key)
    return eqx.tree_at(lambda mdl: (mdl.align_batches, mdl.task_batches), model,
                       (draw(model.align_batches, k_align), draw(model.task_batches, k_task)))


@eqx.filter_jit
def _forecasts(c: _Compiled, measured: _Measured, times, lr, threshold) -> tuple[dict[str, Array], dict[str, Array]]:
    """Every forecast curve and its first crossing of the threshold, in one program
    (run op by op they were 7 s of compiling small kernels for a 12-parameter model)."""
    curves = _curves(c, measured, times, lr)
    return curves, {name: time_to_failure(times, curve, threshold) for name, curve in curves.items()}


def _curves(c: _Compiled, measured: _Measured, times, lr) -> dict[str, Any]:
    res, models = measured.aic, measured.models
    if measured.adam is not None:
        # Gradient flow's forecasts (Taylor, the quartic bound, alignment-risk's) are of
        # another optimizer: only Adam's own model is drawn and scored.
        return {bounded_method(c): adam_sign(measured.adam, times)}
    bounded, _ = bounded_curves(c.optimizer, models, times, lr)
    # with the linearised network, its Gauss-Newton quadratic model is drawn beside it
    quadratic = "gauss_newton_gd" if c.task_model == "linearized" else bounded_method(c)
    return {
        quadratic: bounded,
        "taylor": taylor(res.taylor, times),
        "paper_bound": paper_bound(res.sharpness, res.coupling, times),
        "alignment_risk": alignment_risk(res.sharpness, res.coupling, res.eps * res.grad_norm, times),
    }


@eqx.filter_jit
def _linearized(c: _Compiled, model: AlignedModel, times, lr) -> Array:
    """`linearized_gd` at whole steps `floor(t / lr)`: the network linearised at theta0 under
    its true task loss, GD in the Krylov space of the task's Gauss-Newton matrix from g (depth
    `krylov`), `L_A` exact along the path (geomsim.theory.forecast)."""
    flat0, unravel = ravel_pytree(model.params)
    batches = model.task_batches
    g = ravel_pytree(model.operator("hessian", "task").gradient())[0]
    basis = krylov_basis(c.krylov)(model.operator("ggn", "task").mv_flat, g)

    def outputs(flat):
        p = unravel(flat)
        if batches.stacked:
            return jax.lax.map(lambda b: model.model_fn(p, b[0]), batches.data)
        return tuple(model.model_fn(p, b[0]) for b in batches.data)

    def loss(outs):
        if batches.stacked:
            per = jax.vmap(model.output_loss)(outs, batches.data[1])
            return jnp.sum(batches.weights.astype(per.dtype) * per)
        return sum(w * model.output_loss(o, b[1]) for w, o, b in zip(batches.weights, outs, batches.data,
                                                                      strict=True))

    return linearized_gd(outputs, loss, lambda f: model.align_loss(unravel(f)), flat0, basis,
                         jnp.floor(times / lr), lr)


@eqx.filter_jit
def _noisy(noise: BatchNoise, times, curves: dict[str, Array], lr, threshold, key) -> tuple[dict, dict]:
    """Minibatch gd: `noisy_forecasts` with `NOISE_DRAWS` sequences, crossing where
    `NOISE_QUANTILE` of them do, in one program."""
    return noisy_forecasts(noise, times, curves, lr, threshold, key, NOISE_DRAWS, NOISE_QUANTILE)


def _all_forecasts(c: _Compiled, model, measured: _Measured, times, inputs,
                   key) -> tuple[dict, dict, dict | None]:
    """`_forecasts`, plus the linearised network's (a program of its own: it needs the model);
    with minibatch gd, the curves and crossings with the batches' noise (`_noisy`, `key` draws
    the batches), and the mean path's crossings as the third item (else None)."""
    curves, t_fail = _run("diagnose: the forecasts", _forecasts, c, measured, times, inputs["lr"],
                          inputs["threshold"])
    if c.task_model == "linearized":
        curve = _run("diagnose: the linearised network's forecast", _linearized, c, model, times, inputs["lr"])
        curves["linearized_gd"] = curve
        t_fail["linearized_gd"] = np.asarray(time_to_failure(times, jnp.asarray(curve), inputs["threshold"]))
    if measured.noise is None:
        return curves, t_fail, None
    noisy, noisy_t_fail = _run("diagnose: the batches' noise", _noisy, measured.noise, times, curves, inputs["lr"],
                               inputs["threshold"], key)
    return noisy, noisy_t_fail, t_fail


def _check_inputs(model: Landscape | AlignedModel) -> None:
    """One line naming the first non-finite leaf of theta0 or of the data."""
    if isinstance(model, Landscape):
        require_finite(model.theta0, "theta0 (the model's parameters)")
        return
    require_finite(model.params, "params (theta0)")
    require_finite(model.frozen, "frozen parameters")
    require_finite(model.align_batches, "align_batches")
    require_finite(model.task_batches, "task_batches")


def _check_measured(measured: _Measured, where: str = "theta0") -> None:
    """Losses, gradients and curvature at theta0 finite, and a task gradient that moves."""
    res, models, losses = measured.aic, measured.models, measured.losses
    require_finite(losses, f"loss at {where}")
    require_finite({"grad L_F": res.grad_norm, "grad L_A": res.align_grad_norm}, f"gradient norm at {where}")
    if float(res.grad_norm) == 0.0:
        raise MeasurementError(f"task gradient at {where}: ||grad L_F|| = 0, so fine-tuning does not move from "
                               "theta0 and there is nothing to forecast (check the task data and targets)")
    require_finite({"alignment eigenvalues": res.eigenvalues, "eps": res.eps, "coupling gamma": res.coupling,
                    "Taylor coefficients": res.taylor, "H_F Ritz values": models.ritz_values,
                    "V grad L_A": models.align_grad, "V H_A V^T": models.align_hess}, f"curvature at {where}")
    if measured.adam is not None:
        require_finite({"slope": measured.adam.slope, "curvature u^T H_A u": measured.adam.curvature},
                       f"Adam's model at {where}")
    if measured.noise is not None:
        require_finite({"xi . grad L_A": measured.noise.slope, "xi H_A xi^T": measured.noise.curvature},
                       f"the task batches' gradient noise at {where}")


def _checked(curves: dict[str, Any], times) -> dict[str, Any]:
    """The forecast curves, or one line naming the method and the first time it turns non-finite."""
    for name, curve in curves.items():
        bad = ~np.isfinite(np.asarray(curve))
        if bad.any():
            raise NonFiniteError(f"forecast {name}: non-finite from t = {float(np.asarray(times)[bad.argmax()]):.4g} "
                                 f"({int(bad.sum())} of {bad.size} times)")
    return curves


def _spread(config: DiagnoseConfig, c: _Compiled, model, key, times, inputs) -> dict[str, Any]:
    """t_fail per method over `config.resamples` new PRNG keys (Lanczos start, trace
    probes) and bootstrap draws of the batches: 5%, 50%, 95% quantiles (inf: never)."""
    samples: dict[str, list[float]] = {}
    # One compiled `_measure` called per resample rather than vmapped over them: a vmap
    # would hold R models' activations at once (R x the memory of one diagnosis).
    for k in jax.random.split(jax.random.fold_in(key, 1), config.resamples):
        k_aic, k_data = jax.random.split(k)
        drawn = _resampled(model, k_data)
        measured = _run("diagnose: a resample's measurement", _measure, c, drawn, k_aic, inputs["threshold"],
                        inputs["adam_eps"], inputs["weight_decay"])
        _check_measured(measured, "a resample")
        curves, t_fail, _ = _all_forecasts(c, drawn, measured, times, inputs, jax.random.fold_in(k, 2))
        _checked(curves, times)
        for name, value in t_fail.items():
            samples.setdefault(name, []).append(float(value))
    return {name: {"q05": float(np.quantile(v, 0.05)), "median": float(np.median(v)),
                   "q95": float(np.quantile(v, 0.95)), "never_fraction": float(np.mean(np.isinf(v)))}
            for name, v in samples.items()}


def _defenses(config: DiagnoseConfig, c: _Compiled, model, measured: _Measured, key, times, inputs,
              t_fail: dict[str, float], horizon: float) -> dict[str, Any]:
    """The defense table (geomsim.diagnose.defenses): the bounded method under each defense,
    from the undefended crossing's time (or the horizon) on, in one program."""
    reference = "gauss_newton_gd" if c.task_model == "linearized" else bounded_method(c)
    t_ref = t_fail[reference] if np.isfinite(t_fail[reference]) else horizon
    modelled, skipped = forecastable(c.optimizer)
    names = tuple(n for n in config.defenses if n in modelled)
    settings = Settings(names, config.defense_growth, c.krylov, c.optimizer, c.task_model, c.operator, c.minibatch)
    undefended = measured.adam if measured.adam is not None else measured.models
    out = _run("diagnose: the defenses' forecasts", defense_program, settings, model, undefended,
               measured.aic.basis, key, times, _scalar(t_ref), inputs["lr"], inputs["threshold"],
               _scalar(config.replay), inputs["adam_eps"], inputs["weight_decay"])
    _checked({f"{name} (defended)": row["curve"] for name, row in out.items()}, times)
    table = defense_table(out, t_ref, reference, config.min_task_progress, config.replay,
                          {n: why for n, why in skipped.items() if n in config.defenses or n in NOT_FORECAST})
    table["align_increase"] = {name: np.asarray(row["curve"]).tolist() for name, row in out.items()}
    table["note"] = None if measured.noise is None else (
        "with --minibatch these are the mean path's forecasts: the batches' noise is not modelled under a defense "
        "(a projection would also project it), so the undefended row is the mean path's crossing, later than the "
        "verdict's")
    return table


def _pilot(config: DiagnoseConfig, model, inputs, times, curves, t_fail) -> dict[str, Any]:
    """The pilot's measured curve and each method rescaled by it (geomsim.diagnose.pilot)."""
    settings = PilotSettings(config.pilot_steps, config.optimizer, config.minibatch)
    numbers = PilotInputs(*(inputs[name] for name in PilotInputs._fields))
    curve = _run("diagnose: the pilot fine-tune", run_pilot, settings, model, numbers)
    require_finite(curve._asdict(), "the pilot fine-tune")
    return pilot_report(curve, config.lr, config.threshold, times, curves, t_fail)


def _examples_per_step(config: DiagnoseConfig, model: Landscape | AlignedModel) -> int | None:
    """Task examples one step of the fine-tune sees: every task batch (gd, full-batch
    Adam) or one (`--minibatch`); None for a Landscape (no examples)."""
    if isinstance(model, Landscape):
        return None
    leaves = jax.tree.leaves(model.task_batches.first())
    per_batch = int(leaves[0].shape[0]) if leaves and leaves[0].ndim else 1
    return per_batch if config.minibatch else per_batch * model.task_batches.count


def _run(what: str, program, *args):
    """`program(*args)` under the stall watchdog, its results on every process's host."""
    return host_values(watched(what, program, *args))


def _scalar(value: float) -> Array:
    """A setting as a program input (eqx.filter_jit would key the program on a Python float)."""
    return jnp.asarray(value, jnp.zeros(()).dtype)


def _say(message: str, quiet: bool) -> None:
    if not quiet and current_group().leader:
        print(f"geomsim diagnose: {message}", file=sys.stderr, flush=True)


def _place(config: DiagnoseConfig, model: Landscape | AlignedModel) -> Landscape | AlignedModel:
    """The model on `config.mesh` (every device of every process), or as it is."""
    shape = config.mesh_shape()
    if shape is None:
        return model
    if isinstance(model, Landscape):
        raise ConfigError(f"mesh: needs an AlignedModel (apply_fn, params and batches); {config.model}() returned "
                          "a Landscape")
    devices = len(jax.devices())
    if shape[0] * shape[1] != devices:
        raise ConfigError(f"mesh: {config.mesh} uses {shape[0] * shape[1]} devices, but there are {devices} "
                          f"(jax.devices(), over {jax.process_count()} process(es)); DATA x MODEL must equal it")
    return model.on_mesh(device_mesh(*shape))


def diagnose(config: DiagnoseConfig, out_dir: str | Path, *, quiet: bool = False) -> dict[str, Any]:
    """Measure, forecast and write the report for `config`; returns the report dict.

    Started as several processes with a `mesh` over all their devices, every process
    runs the same sharded program and gets the report; process 0 writes it.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    leader = current_group().leader
    if leader:
        out_dir.mkdir(parents=True, exist_ok=True)
    calibration = load_calibration(config.calibration)  # a bad file fails before any measurement
    model = load_model(config)
    _check_inputs(model)
    model = _place(config, model)
    theta0 = model.theta0 if isinstance(model, Landscape) else model.params
    dim = _dimension(theta0)
    if not config.rank < dim:
        raise ConfigError(f"rank: must be in [1, d - 1] = [1, {dim - 1}] for this model (got {config.rank})")
    key = jax.random.key(config.seed)
    m = _krylov_depth(config, dim)
    stages = 3 + (config.defenses != ("none",)) + (config.pilot_steps > 0)
    _say(f"[1/{stages}] AIC at theta0 and local models (d = {dim}, k = {config.rank}, {config.operator}, "
         f"Krylov depth {m})", quiet)
    _check_operators(config, model)
    num_eigs = min(dim, max(2 * config.rank + 1, 8))
    c = _Compiled(config.rank, num_eigs, m, config.trace_samples, config.operator, config.task_model,
                  config.optimizer, config.minibatch)
    # inputs of the programs, made once
    inputs = {name: _scalar(getattr(config, name)) for name in ("lr", "threshold", "adam_eps", "weight_decay", "b1",
                                                                "b2")}
    measured = _run("diagnose: the measurement at theta0", _measure, c, model, key, inputs["threshold"],
                    inputs["adam_eps"], inputs["weight_decay"])
    _check_measured(measured)
    res, models, losses, adam = measured.aic, measured.models, measured.losses, measured.adam
    task_norm = float(jnp.max(jnp.abs(models.ritz_values)))
    if adam is not None:  # Adam's steps are ~lr per coordinate, not lr ||g||: its own time scale
        horizon = config.horizon or 100.0 * float(adam_time_scale(adam, config.threshold))
        scale = "100 x the time Adam's model needs to reach the threshold"
    else:
        horizon = config.horizon or (10.0 / task_norm if task_norm > 0 else np.inf)
        scale = "10 / ||H_F||"
    if not np.isfinite(horizon):
        raise MeasurementError(f"horizon: {scale} is not finite (nothing in the local model moves); "
                               "give --horizon T")
    times = jnp.geomspace(horizon * 1e-4, horizon, config.points)
    _say(f"[2/{stages}] forecasts to t = {horizon:.3g}" + (f", {config.resamples} resamples" if config.resamples else ""),
         quiet)
    curves, t_fail, mean_t_fail = _all_forecasts(c, model, measured, times, inputs, jax.random.fold_in(key, 2))
    curves, t_fail = _checked(curves, times), {name: float(value) for name, value in t_fail.items()}
    spread = _spread(config, c, model, key, times, inputs) if config.resamples else None
    defenses = None
    if config.defenses != ("none",):
        _say(f"[3/{stages}] the forecast under {', '.join(config.defenses)}", quiet)
        defenses = _defenses(config, c, model, measured, key, times, inputs, t_fail, horizon)
    chosen = verdict(config.optimizer, config.lr, config.threshold, t_fail, spread, calibration,
                     _examples_per_step(config, model))
    pilot = None
    if config.pilot_steps:
        _say(f"[{stages - 1}/{stages}] pilot: {config.pilot_steps} real steps of {config.optimizer} at lr "
             f"{config.lr:g}", quiet)
        pilot = _pilot(config, model, inputs, times, curves, t_fail)
        chosen = with_pilot(chosen, pilot, config.lr, config.optimizer != "flow", _examples_per_step(config, model))
        if (pilot["budget_fraction"] or 0.0) > BUDGET:
            _say(f"note: the pilot is {_budget(pilot)}", quiet)
    _say(f"[{stages}/{stages}] report", quiet)
    report = {
        "model": config.model or config.hf,
        "aic": res.to_dict(),
        "losses": {name: float(v) for name, v in losses.items()},
        "forecast": {"t": np.asarray(times).tolist(),
                     "align_increase": {name: np.asarray(curve).tolist() for name, curve in curves.items()},
                     "bounded_method": bounded_method(config)},
        "t_fail": t_fail,
        "t_fail_spread": spread,
        "minibatch": None if mean_t_fail is None else {
            "batches": int(measured.noise.weights.shape[0]), "draws": NOISE_DRAWS, "quantile": NOISE_QUANTILE,
            "t_fail_mean_path": {name: float(v) for name, v in mean_t_fail.items()},
            "noise": "each step one task batch drawn at random (weights w_b); the forecasts cross where "
                     f"{NOISE_QUANTILE:.0%} of {NOISE_DRAWS} simulated draw sequences do (docs/theory.md, section 10)"},
        "verdict": chosen,
        "pilot": pilot,
        "aic_conditions": aic_conditions(res.to_dict(), chosen["t_fail"], config.optimizer),
        "defenses": defenses,
        "adam": None if adam is None else {
            "slope": float(adam.slope), "curvature": float(adam.curvature), "step_norm": float(adam.step_norm),
            "second_moment": "E_b[g_b^2] over the task batches" if config.minibatch else "g^2 (full batch)"},
        "threshold": config.threshold,
        "horizon": horizon,
        "krylov_depth": int(m),
        "task_spectral_norm": task_norm,
        "task_ritz_min": float(models.ritz_values.min()),
        "config": config_layer.to_dict(config),
        "versions": environment_versions(),
    }
    report["figures"] = []
    if leader:  # the numbers on disk first, then the figures (and the report again, naming them)
        _write(report, t_start, out_dir)
        figures = write_figures(report, np.asarray(res.eigenvalues), out_dir)
        if figures:
            report["figures"] = figures
            _write(report, t_start, out_dir)
    return report


def _write(report: dict[str, Any], t_start: float, out_dir: Path) -> None:
    report["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    write_json(out_dir / "report.json", report)
    with atomic_open(out_dir / "report.md") as handle:
        handle.write(_markdown(report))


def _fmt(value: float | None) -> str:
    return "never (within the horizon)" if value is None or not np.isfinite(value) else f"{value:.4g}"


def _markdown(report: dict[str, Any]) -> str:
    aic, t_fail = report["aic"], report["t_fail"]
    spread = report.get("t_fail_spread") or {}
    rows = "\n".join(f"| {name} | {_fmt(value)} | " + (
        f"{_fmt(spread[name]['q05'])} .. {_fmt(spread[name]['q95'])}" if name in spread else "not resampled") + " |"
        for name, value in t_fail.items())
    conditions = "\n".join(f"| {c['name']} | {'yes' if c['holds'] else 'no'} | {c['measured']} | {c['criterion']} |"
                           for c in report["aic_conditions"])
    return f"""# geomsim diagnosis of `{report['model']}`

**Verdict:** {_verdict_line(report)} ({_basis(report)}; docs/theory.md, section 10).

{_interval_note(report)}{_pilot_note(report)}

| AIC condition | holds | measured | criterion |
| --- | --- | --- | --- |
{conditions}

| AIC quantity | value |
| --- | --- |
| sharpness lambda (k-th alignment eigenvalue) | {aic['sharpness']} |
| mu (curvature outside S) | {aic['mu']} |
| eps (first-order overlap) | {aic['eps']} |
| gamma (curvature coupling) | {aic['coupling']} |
| Taylor c1..c4 | {aic['taylor'][1:]} |
| ||H_F|| (largest Ritz value on the Krylov space) | {report['task_spectral_norm']} |

| method | t_fail (t = steps x lr) | 5% .. 95% over `--resamples` |
| --- | --- | --- |
{rows}

{_method_notes(report)} Figures: {', '.join(report['figures']) or 'none'}.
{defense_markdown(report.get("defenses"))}"""


def _verdict_line(report: dict[str, Any]) -> str:
    v, tau = report["verdict"], report["threshold"]
    if v.get("pilot") == "measured":
        when = f"step {v['steps']:g} at lr {report['config']['lr']:g}" if v["steps"] is not None else "t"
        return (f"alignment loss **rose by {tau:g} nats within the pilot**, at {when} (t = {_fmt(v['t_fail'])}; "
                "measured, not forecast)")
    low = v["t_fail_low"]
    if low is None or not np.isfinite(low):
        return f"alignment loss is not forecast to rise by {tau:g} nats before t = {report['horizon']:.4g}"
    if v["steps_low"] is None:  # gradient flow: no steps
        return (f"alignment loss is forecast to rise by {tau:g} nats from t = {_fmt(low)} on (interval "
                f"{_fmt(low)} .. {_fmt(v['t_fail_high'])}, point forecast {_fmt(v['t_fail'])})")
    lr = report["config"]["lr"]
    examples = f", about {v['examples_low']:.3g} task examples" if v["examples_low"] else ""
    high = "unbounded" if v["steps_high"] is None or not np.isfinite(v["steps_high"]) else f"{v['steps_high']:.4g}"
    if v["steps_low"] < 1:
        return (f"alignment loss is forecast to rise by {tau:g} nats **within the first step** at lr {lr:g} (the "
                f"early end is {v['steps_low']:.3g} steps, t = {_fmt(low)}; the late end {high} steps; point "
                f"forecast {_fmt(v['steps'])} steps)")
    return (f"alignment loss is forecast to rise by {tau:g} nats after **{v['steps_low']:.4g} steps** at lr {lr:g} "
            f"at the earliest (t = {_fmt(low)}{examples}); interval {v['steps_low']:.4g} .. {high} steps, point "
            f"forecast {_fmt(v['steps'])} steps")


def _interval_note(report: dict[str, Any]) -> str:
    v = report["verdict"]
    if v.get("pilot") == "measured":
        return "Interval: none; the crossing was measured by the pilot's own steps."
    moved = ""
    if v.get("pilot") == "rescaled":  # the interval below is the zero-step one; the pilot moved its early end
        v = {**v, "method": report["pilot"]["zero_step_method"]}
        moved = (f" Then the pilot moved the early end earlier, to `{report['verdict']['method']}`'s rescaled "
                 "crossing (uncalibrated; see the pilot below).")
    return _zero_step_interval(report, v) + moved


def _zero_step_interval(report: dict[str, Any], v: dict[str, Any]) -> str:
    cal = v["calibration"]
    if cal is None:
        each = ("each method's 5%-95% spread over `--resamples`" if v["resampled"] else
                "each method's point forecast (`--resamples N` adds the measurement's spread)")
        return (f"No method here is calibrated for optimizer `{report['config']['optimizer']}`, so the verdict "
                f"takes the earliest forecast of all methods, `{v['method']}`'s, uncorrected; the interval runs "
                f"from it to the latest, over {each}.")
    low = "0 (too few calibration runs)" if cal["low"] is None else f"{10 ** cal['low']:.3g}x"
    thin = " (too few crossings there: the lowest bound of all levels)" if cal["fallback"] else ""
    high = ("no upper end: " + f"{cal['censored']} of its {cal['runs']} calibration fine-tunes never reached the "
            "threshold within their measured steps" if cal["high"] is None else f"upper end {10 ** cal['high']:.3g}x")
    spread = "its `--resamples` spread" if v["resampled"] else "its point forecast"
    return (f"Interval: each calibrated method ({', '.join(cal['methods'])}) times its error on measured "
            f"{cal['family']} fine-tunes at the nearest measured level, {cal['level']:g} nats{thin} (split-conformal, "
            f"{cal['alpha']:.0%} per end; {cal['source']}). The earliest lower end binds: `{v['method']}`'s, "
            f"{spread} times {low}, after which the measured crossing came in all but {cal['alpha']:.0%} of its "
            f"calibration fine-tunes; {high}; {cal['missed']} crossed where it forecast none.")


def _budget(pilot: dict[str, Any]) -> str:
    fraction = pilot["budget_fraction"]
    if fraction is None:
        return "the zero-step point forecast never crosses"
    over = f", more than the {BUDGET:.0%} a pilot is meant to cost" if fraction > BUDGET else ""
    return f"{fraction:.1%} of the zero-step point forecast's steps{over}"


def _pilot_note(report: dict[str, Any]) -> str:
    pilot = report.get("pilot")
    if not pilot:
        return ""
    lr, tau = report["config"]["lr"], report["threshold"]
    head = (f"\n\n**Pilot:** {pilot['steps']} real steps (t = {pilot['t']:.4g}; {_budget(pilot)}); measured increase "
            f"{pilot['align_increase'][-1]:.4g} nats. ")
    if pilot["crossed_step"] is not None:
        return head + (f"The pilot itself crossed {tau:g} nats at step {pilot['crossed_step']} (t = "
                       f"{pilot['crossed_step'] * lr:.4g}): measured, this is the verdict.")
    if pilot["align_increase"][-1] <= 0:
        return head + ("The alignment loss did not rise during the pilot, so no forecast is rescaled; the zero-step "
                       "verdict stands.")

    def num(v):  # a forecast that is not positive at the pilot's time has no ratio, so no rescaled crossing
        return f"{v:.4g}" if v is not None and np.isfinite(v) else "n/a"

    def rescaled(m):
        return _fmt(m["t_fail_rescaled"]) if np.isfinite(m["ratio"]) else "n/a"

    rows = "\n".join(f"| {name} | {num(m['forecast_at_pilot'])} | {num(m['ratio'])} | {_fmt(m['t_fail'])} | "
                     f"{rescaled(m)} | {'yes' if m['moves_verdict'] else 'no (its shape omits c1, c2)'} |"
                     for name, m in pilot["methods"].items())
    moved = (f"`{report['verdict']['method']}` rescaled crosses before the zero-step early end (t = "
             f"{_fmt(pilot['zero_step_low'])}), so its crossing is the verdict's early end, uncalibrated."
             if pilot["moved_verdict"] else "No rescaled crossing that may move the verdict is earlier than the "
             "zero-step early end, which stands (a pilot never moves the verdict later: the calibration is of "
             "zero-step forecasts).")
    return head + moved + ("\n\n| method | forecast at the pilot's t (nats) | measured / forecast | t_fail before | "
                           "t_fail rescaled | may move the verdict |\n| --- | --- | --- | --- | --- | --- |\n" + rows)


def _basis(report: dict[str, Any]) -> str:
    method = report["verdict"]["method"]
    if report["verdict"].get("pilot") == "measured":
        return "measured: the pilot's fine-tune"
    adam = report.get("adam")
    if adam is None:
        described = {"taylor": "the Taylor polynomial c1..c4", "paper_bound": "the quartic bound",
                     "alignment_risk": "alignment-risk's formula"}
        basis = f"{method}: {described.get(method, 'the local quadratic models')}"
        noise = report.get("minibatch")
        if noise:
            mean = noise["t_fail_mean_path"].get(method, math.nan)
            basis += (f", with the noise of one of {noise['batches']} task batches per step: the crossing "
                      f"{noise['quantile']:.0%} of {noise['draws']} simulated draw sequences reach (the mean path "
                      f"alone: t = {_fmt(mean)})")
        return basis
    steps = report["t_fail"][method] / report["config"]["lr"]
    when = f"{steps:.4g} steps at lr {report['config']['lr']:g}" if np.isfinite(steps) else "no crossing"
    return (f"{method}: {report['config']['optimizer']} in its flow limit, `delta(t) = -t u`, slope "
            f"{adam['slope']:.4g} nats per unit t, u^T H_A u = {adam['curvature']:.4g}, second moment "
            f"{adam['second_moment']}; {when}")


def _method_notes(report: dict[str, Any]) -> str:
    if report.get("adam") is not None:
        return ("`adam_sign` is `-t grad L_A . u + (t^2 / 2) u^T H_A u` with `u = g / (sqrt(v) + eps) + wd theta0`: "
                "exact in Adam's first step, it ignores the task being learned (coordinates whose gradient changes "
                "sign stall), so past the onset it errs early.")
    return ("`taylor` is exact as t -> 0 and unbounded past its radius; `paper_bound` is the quartic lower bound "
            "`lambda gamma^2 t^4 / 8`; `alignment_risk` is that package's formula.")


def write_figures(report: dict[str, Any], eigenvalues: np.ndarray, out_dir: Path) -> list[str]:
    """The report's figures in `out_dir` (the formats of `--figures`); their file names."""
    if not current_formats():
        return []  # --figures none: matplotlib is not even imported
    from geomsim.plotting.style import ALIGN_LABEL, TIME_LABEL, plt, save

    t = np.asarray(report["forecast"]["t"])
    fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    for i, (name, values) in enumerate(report["forecast"]["align_increase"].items()):
        v = np.asarray(values, dtype=float)
        ax.loglog(t, np.where(v > 0, v, np.nan), color=f"C{i}", label=name.replace("_", " "))
    ax.axhline(report["threshold"], color="0.5", ls="--", lw=0.8, label=f"threshold {report['threshold']:g} nats")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(ALIGN_LABEL)
    ax.legend(fontsize=8)
    ax.set_title("Forecasts of the alignment loss before fine-tuning", fontsize=9)
    files = save(fig, out_dir, "fig_forecast")
    fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    k = report["aic"]["k"]
    idx = np.arange(1, len(eigenvalues) + 1)
    ax.semilogy(idx, np.abs(eigenvalues), "o-", color="C0", label="|eigenvalue| of the alignment Hessian")
    ax.axvline(k + 0.5, color="C3", ls="--", lw=0.8, label=f"S: top k = {k}")
    ax.set_xlabel("eigenvalue index (descending)")
    ax.set_ylabel("curvature (loss / param^2)")
    ax.legend(fontsize=8)
    files += save(fig, out_dir, "fig_spectrum")
    return [p.name for p in files]

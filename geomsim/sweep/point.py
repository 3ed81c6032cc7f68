"""One grid point of a sweep as a pure function, vmapped over the grid.

`make_point_function(config)` returns `point(sharpness, coupling, seed_index) ->
dict of arrays`: it builds the landscape, runs the optimizer (or gradient flow),
computes the exact Taylor coefficients and the AIC (matrix-free: Lanczos on
Hessian-vector products over the whole d-dim space, exact here), fits the
onset law, and classifies the run.  No host syncs: the whole thing jits and vmaps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geomsim.defenses import build_defense
from geomsim.dynamics import descend, gradient_flow, log_record_steps, make_optimizer
from geomsim.fitting import MAX_POWER, fit_onset, local_slopes
from geomsim.landscapes import resolve_landscape, subspace_basis
from geomsim.sweep.config import SweepConfig
from geomsim.theory import (
    align_coefficients,
    crossover_time,
    falling_factorial_basis,
    first_crossing,
    quartic_time_to_failure,
    window_end,
)
from geomsim.theory.aic import landscape_aic
from geomsim.theory.forecast import (
    adam_sign,
    landscape_adam_model,
    landscape_local_models,
    quadratic_flow,
    quadratic_gd,
    time_to_failure,
)

STATUS_OK, STATUS_DIVERGED, STATUS_NAN, STATUS_NO_ONSET = 0, 1, 2, 3
STATUS_NAMES = {STATUS_OK: "ok", STATUS_DIVERGED: "diverged", STATUS_NAN: "nan", STATUS_NO_ONSET: "no_onset"}
TAYLOR_ORDER = 6
# Round-off floor of Delta L_A in units of eps_machine * ||H_A|| * ||delta||^2.
FLOOR_ULPS = 100.0
# Divergence: the displacement exceeds this many times the distance gradient
# flow could cover at its initial speed over the whole run.
DIVERGENCE_FACTOR = 1e6

CURVE_FIELDS = ("time", "steps", "align_increase", "task_loss", "subspace_norm", "delta_norm", "local_slope", "floor",
                "forecast")


def record_steps(config: SweepConfig) -> np.ndarray:
    """Static step counts at which every run is recorded."""
    return log_record_steps(config.steps, config.records)


def time_basis_table(config: SweepConfig, steps: jax.Array) -> jax.Array:
    """`(MAX_POWER + 1, r)` table of `t^p` laws; discrete GD uses falling factorials."""
    times = steps * config.lr
    if config.optimizer == "gd":
        return jnp.stack([falling_factorial_basis(steps, config.lr, p) for p in range(MAX_POWER + 1)])
    return jnp.stack([times**p for p in range(MAX_POWER + 1)])


def make_point_function(config: SweepConfig) -> Callable[..., dict[str, jax.Array]]:
    """Pure per-point function for `config` (see module docstring)."""
    factory = resolve_landscape(config.landscape)
    rec = record_steps(config)
    # The config checked every value on the host; runtime checks would put a
    # host callback in the program and keep it out of the compilation cache.
    host_checked = {"runtime_checks": False} if "runtime_checks" in inspect.signature(factory).parameters else {}

    def point(sharpness, coupling, seed_index):
        key = jax.random.fold_in(jax.random.key(config.seed), seed_index)
        k_land, k_noise = jax.random.split(key)
        landscape = factory(
            k_land,
            dim=config.dim,
            rank=config.rank,
            sharpness=sharpness,
            coupling=coupling,
            mu=config.mu,
            eps=config.eps,
            cubic_coupling=config.cubic_coupling,
            align_cubic=config.align_cubic,
            **config.landscape_options,
            **host_checked,
        )
        basis = subspace_basis(landscape, config.rank)
        defense = build_defense(config.defense, landscape, rank=config.defense_rank or config.rank,
                                key=jax.random.fold_in(key, 11), every=config.defense_every,
                                growth=config.defense_growth)
        if config.optimizer == "flow":
            dtype = jnp.zeros(()).dtype
            traj = gradient_flow(landscape, jnp.asarray(rec * config.lr, dtype), basis)
            steps = jnp.asarray(rec, dtype)
        else:
            opt = make_optimizer(
                config.optimizer, config.lr, key=k_noise, momentum=config.momentum, noise=config.noise
            )
            traj = descend(landscape, optax.chain(opt, defense.transform), rec, config.lr, basis)
            steps = traj.steps

        # krylov_dim = dim: one exact Lanczos pass (the S eigenvalue can be repeated).
        aic = landscape_aic(landscape, config.rank, key=jax.random.fold_in(key, 7), krylov_dim=config.dim,
                            num_eigs=config.dim, trace_samples=0, window=False, laws=False)
        # Under a projection defense: the projected flow's exact coefficients (tracked:
        # valid until its first re-estimate).
        projector = None if config.defense == "none" else defense.projector()
        coeffs = align_coefficients(landscape, TAYLOR_ORDER, projector=projector)
        # Bounded forecast: the run's optimizer on the local quadratic models (docs/theory.md, "Forecasts").
        models = landscape_local_models(landscape, config.dim, projector)
        # GD: exact on the models; momentum: flow at its effective time t / (1 - beta)
        # (tests/test_optimizer_claims.py); Adam: its flow limit delta = -t g / (|g| + eps)
        # (no Krylov model applies: its step is not a function of H_F and g).
        if config.optimizer == "gd":
            forecast = quadratic_gd(models, steps, config.lr)
        elif config.optimizer == "adam":
            forecast = adam_sign(landscape_adam_model(landscape, 1e-8, projector=projector), traj.time)
        else:
            scale = 1.0 / (1.0 - config.momentum) if config.optimizer == "momentum" else 1.0
            forecast = quadratic_flow(models, traj.time * scale)
        eps_machine = jnp.finfo(traj.align_increase.dtype).eps
        floor = FLOOR_ULPS * eps_machine * aic.spectral_norm * traj.delta_norm**2
        table = time_basis_table(config, steps)
        fit = fit_onset(
            traj.time, traj.align_increase, floor, table,
            slope_tol=config.slope_tol, min_decades=config.min_decades,
        )

        finite = jnp.all(jnp.isfinite(traj.align_increase) & jnp.isfinite(traj.task_loss))
        reach = DIVERGENCE_FACTOR * jnp.maximum(1.0, traj.time[-1] * aic.grad_norm)
        diverged = jnp.any(traj.delta_norm > reach)
        status = jnp.where(
            ~finite,
            STATUS_NAN,
            jnp.where(diverged, STATUS_DIVERGED, jnp.where(fit.status == 0, STATUS_OK, STATUS_NO_ONSET)),
        )
        c4_fit = jnp.where(fit.power == 4, fit.prefactor, jnp.nan)
        prefactor_pred = coeffs[jnp.clip(fit.power, 0, TAYLOR_ORDER)]
        return dict(
            exponent=fit.exponent,
            exponent_lo=fit.exponent_lo,
            exponent_hi=fit.exponent_hi,
            power=fit.power,
            prefactor=fit.prefactor,
            prefactor_pred=prefactor_pred,
            prefactor_ratio=fit.prefactor / prefactor_pred,
            c4_fit=c4_fit,
            c4_pred=coeffs[4],
            c4_ratio=c4_fit / coeffs[4],
            c2_pred=coeffs[2],
            c6_pred=coeffs[6],
            crossover_pred=crossover_time(coeffs[2], coeffs[4]),
            window_end_pred=window_end(coeffs[4], coeffs[5]),
            onset_t=fit.window_lo,
            window_hi=fit.window_hi,
            t_fail_pred=time_to_failure(traj.time, forecast, config.threshold),
            t_fail_quartic=quartic_time_to_failure(coeffs[4], config.threshold),
            t_fail_meas=first_crossing(traj.time, traj.align_increase, config.threshold),
            sharpness_meas=aic.sharpness,
            mu_meas=aic.mu,
            eps_meas=aic.eps,
            coupling_meas=aic.coupling,
            rank_meas=aic.rank,
            status_code=status,
            fit_code=fit.status,
            taylor=coeffs,
            curve_time=traj.time,
            curve_steps=steps,
            curve_align_increase=traj.align_increase,
            curve_task_loss=traj.task_loss,
            curve_subspace_norm=traj.subspace_norm,
            curve_delta_norm=traj.delta_norm,
            curve_local_slope=local_slopes(traj.time, traj.align_increase, floor),
            curve_floor=floor,
            curve_forecast=forecast,
        )

    return point

"""One run of the sweep: measure the AIC at theta0, then fine-tune and record.

A run is (model, benign task, arm).  The task is the mixture
`L_F = (1 - a) L_base + a L_other` on the seed's fine-tuning sets; the arm
fixes theta0 and the overlap knob `keep` of the tilted task
(`geomsim.landscapes.tilt_overlap`):

    polished_eps0   polished model, keep = 0 (eps = 0 exactly)
    polished        polished model, keep = 1 (the task as it is)
    as_trained      AdamW-aligned model before the polish, keep = 1

At theta0 (before any fine-tuning) a run measures `||H_F||` (Lanczos), eps,
gamma in both conventions, and the exact Taylor coefficients c1..c4 of
`Delta L_A(t)` along gradient flow (Taylor-mode autodiff), plus the S-part's
own coefficients `c2_s = (1/2) (P_S g)^T H_A (P_S g)` and
`c4_s = (1/8) (P_S H_F g)^T H_A (P_S H_F g)` (the theorem's quantity).  Then it
integrates gradient flow (fixed Bosh3 or Tsit5 steps, `flow_solver`) on a
geometric time grid from `flow_t_min` to
`flow_t_max` (units of 1/||H_F||, so every run samples the same part of its
Taylor window) and records `Delta L_A`, the S-part `(1/2) sum_i lambda_i (u_i .
delta)^2`, `||P_S delta||`, `||delta||` and `L_F`.  g here is the gradient of
the task the run fine-tunes on (the tilted one for polished_eps0).

`adam_run` is the realistic fine-tune: Adam on fresh batches of the real task
from the polished model, recording harm rate and task accuracy (held-out) with
`Delta L_A`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from geomsim.curvature import eigsh, hessian_operator
from geomsim.dynamics import gradient_flow, log_record_steps, measure
from geomsim.landscapes import FunctionLandscape, tilt_overlap
from geomsim.tasks import Batch, answer_accuracy, answer_loss, harm_rate, make_batch
from geomsim.testbed.models import MODELS
from geomsim.testbed.sweep.config import TestbedSweepConfig
from geomsim.testbed.sweep.stages import SweepData
from geomsim.theory import Subspace, align_coefficients, landscape_aic

ARM_KEEP = {"polished_eps0": 0.0, "polished": 1.0, "as_trained": 1.0}
SOLVERS = {"bosh3": diffrax.Bosh3, "tsit5": diffrax.Tsit5}


def flow_times(config: TestbedSweepConfig) -> np.ndarray:
    """Recorded flow times in units of 1/||H_F||: geometric, ratio <= `flow_ratio`."""
    n = int(np.ceil(np.log(config.flow_t_max / config.flow_t_min) / np.log(config.flow_ratio))) + 1
    return np.geomspace(config.flow_t_min, config.flow_t_max, n)


def mixture_task(data: SweepData, base: Batch, other: Batch, mix: Array):
    """`L_F = (1 - a) L_base + a L_other` (nats per answer token) on one seed's fine-tuning sets."""

    def task_loss(params):
        return (1.0 - mix) * answer_loss(data.apply_fn, params, base) + mix * answer_loss(data.apply_fn, params, other)

    return task_loss


def s_part(basis: Float[Array, "k d"], lam: Float[Array, " k"], delta: PyTree) -> Array:
    """`(1/2) (P_S delta)^T H_A (P_S delta) = (1/2) sum_i lambda_i (u_i . delta)^2` (nats)."""
    coords = basis @ ravel_pytree(delta)[0]
    return 0.5 * jnp.sum(lam * coords**2)


def task_sharpness_of(task_op, key: PRNGKeyArray) -> Float[Array, ""]:
    """`||H_F||`, the time unit of a run: a few percent is plenty (one Lanczos pass of 12 products)."""
    return eigsh(1, tol=1e-2, krylov_dim=12, max_matvecs=12)(task_op, key).eigenvalues[0]


def _landscape(data: SweepData, theta0: PyTree, basis: Float[Array, "k d"], target: Array, base: Batch,
               other: Batch, mix: Array, keep: Array):
    task = mixture_task(data, base, other, mix)
    land = tilt_overlap(
        FunctionLandscape(theta0=theta0, align_fn=lambda p: data.align_loss(p, target), task_fn=task), basis, keep)
    return land, task


def law_taylor(data: SweepData, theta0: PyTree, basis: Float[Array, "k d"], target: Array, base: Batch,
               other: Batch, mix: Array, keep: Array) -> Float[Array, " 5"]:
    """Exact Taylor coefficients c0..c4 of `Delta L_A(t)` along the run's gradient flow
    (by the model's `taylor_method`: jet has no rule for the Llama model's scan)."""
    return align_coefficients(_landscape(data, theta0, basis, target, base, other, mix, keep)[0], 4,
                              MODELS[data.config.model].taylor_method)


def law_run(data: SweepData, theta0: PyTree, basis: Float[Array, "k d"], lam: Float[Array, " k"], target: Array,
            base: Batch, other: Batch, mix: Array, keep: Array, key: PRNGKeyArray) -> dict[str, Array]:
    """Measure and fine-tune one run (see the module docstring; the Taylor
    coefficients come from `law_taylor`); pure, vmap it over runs."""
    cfg = data.config
    land, task = _landscape(data, theta0, basis, target, base, other, mix, keep)
    flat0 = ravel_pytree(theta0)[0]
    # The AIC against the model's S through the library's measurement (g is the tilted
    # task's gradient, H_F the task's: the tilt is linear); the Taylor coefficients are
    # law_taylor's.
    res = landscape_aic(land, basis.shape[0], key=key, subspace=Subspace(basis, lam), trace_samples=0,
                        window=False, laws=False)
    task_sharpness = task_sharpness_of(hessian_operator(task, theta0), key)
    times = jnp.asarray(flow_times(cfg), flat0.dtype) / task_sharpness
    traj = gradient_flow(land, times, basis, method="grid", solver=SOLVERS[cfg.flow_solver](),
                         extra=lambda d: {"s_part": s_part(basis, lam, d)})
    return dict(
        task_sharpness=task_sharpness,
        grad_norm=res.grad_norm,
        eps=res.eps,
        eps_abs=jnp.linalg.norm(res.grad_coords),
        coupling=res.coupling,
        coupling_fisher=res.coupling_fisher,
        overlap=res.eps**2,  # ||P_S u||^2 / ||u||^2 of the first update u = -g
        align_grad_norm=res.align_grad_norm,
        c2_s=res.c2_s,
        c4_s=res.c4_s,
        time=traj.time,
        align_increase=traj.align_increase,
        s_part=traj.extra["s_part"],
        subspace_norm=traj.subspace_norm,
        delta_norm=traj.delta_norm,
        task_loss=traj.task_loss,
    )


def law_chunk(data: SweepData, runs: dict[str, Any]) -> dict[str, Array]:
    """`law_run` vmapped over a chunk of runs (leading axis of every input), with the
    Taylor coefficients computed one run at a time: Taylor mode through the
    transformer needs ~150 MiB of buffers per run, the rest ~45."""
    out = jax.vmap(lambda kw: law_run(data, **kw))(runs)
    taylor_inputs = {k: v for k, v in runs.items() if k not in ("lam", "key")}
    coeffs = jax.lax.map(lambda kw: law_taylor(data, **kw), taylor_inputs)
    out.update({f"c{j}": coeffs[:, j] for j in range(1, 5)})
    return out


def adam_record_steps(config: TestbedSweepConfig) -> np.ndarray:
    """Recorded Adam steps: log-spaced in [1, adam_steps], the last one exactly `adam_steps`."""
    return log_record_steps(config.adam_steps, config.adam_records)


class Finetune(NamedTuple):
    """How a realistic fine-tune is run (the defenses change one or more parts).

    optimizer: chained transformation; its `update` gets the absolute parameters.
    init: `z0`, the optimised variable (delta, or a LoRA adapter).
    state0: the optimizer's initial state (built by whoever knows what it needs:
        a tracked projection solves at the absolute theta0, LoRA's Adam is shaped like z).
    to_delta: `z -> delta = theta - theta0`.
    extra_loss: `(params, key) -> scalar` added to the batch loss (e.g. replay), or None.
    """

    optimizer: optax.GradientTransformation
    init: PyTree
    state0: Any
    to_delta: Callable[[PyTree], PyTree]
    extra_loss: Callable[[PyTree, PRNGKeyArray], Array] | None = None


def plain_finetune(config: TestbedSweepConfig, theta0: PyTree) -> Finetune:
    """Adam on the full parameters (the sweep's arm and the defenses' `none`)."""
    opt = optax.adam(config.adam_lr)
    return Finetune(opt, jax.tree.map(jnp.zeros_like, theta0), opt.init(theta0), lambda z: z)


def adam_batch(data: SweepData, k_base: PRNGKeyArray, k_other: PRNGKeyArray) -> tuple[Batch, Batch]:
    """One Adam step's fresh batch: `adam_batch` examples of each component task."""
    cfg = data.config
    return (make_batch(data.lang, cfg.task_base, k_base, cfg.adam_batch),
            make_batch(data.lang, cfg.task_other, k_other, cfg.adam_batch))


def adam_run(data: SweepData, theta0: PyTree, basis: Float[Array, "k d"], lam: Float[Array, " k"], target: Array,
             base: Batch, other: Batch, mix: Array, key: PRNGKeyArray,
             finetune: Callable[[PyTree], Finetune] | None = None) -> dict[str, Array]:
    """Adam on the real task from the polished model, as fine-tuning is done in practice
    (float32; every step a fresh batch of `adam_batch` examples of each component task), loss
    `(1 - a) L_base + a L_other`.  Records at `adam_record_steps`: `Delta L_A`, its
    S-part, `L_F` on the run's fixed fine-tuning sets (`base`, `other`), the harm
    rate on held-out harmful prompts and the held-out task accuracy
    `(1 - a) acc_base + a acc_other`.

    `finetune(theta0_float32) -> Finetune` replaces plain Adam (a defense: a projection
    chained after Adam, a replay term, LoRA adapters)."""
    cfg, bed = data.config, data.bed
    theta0 = jax.tree.map(lambda x: x.astype(jnp.float32), theta0)  # training precision
    land = FunctionLandscape(theta0=theta0, align_fn=lambda p: data.align_loss(p, target),
                             task_fn=mixture_task(data, base, other, mix))
    ev_base, ev_other = data.task_eval["base"], data.task_eval["other"]
    spec = (finetune or (lambda t: plain_finetune(cfg, t)))(theta0)
    opt = spec.optimizer

    def params_of(z):
        return jax.tree.map(jnp.add, theta0, spec.to_delta(z))

    def batch_loss(z, step):
        k_base, k_other, k_extra = jax.random.split(jax.random.fold_in(key, step), 3)
        p = params_of(z)
        loss = mixture_task(data, *adam_batch(data, k_base, k_other), mix)(p)
        return loss if spec.extra_loss is None else loss + spec.extra_loss(p, k_extra)

    def one_step(_, carry):
        z, state, step = carry
        updates, state = opt.update(jax.grad(batch_loss)(z, step), state, params_of(z))
        return optax.apply_updates(z, updates), state, step + 1

    def record(z):
        delta = spec.to_delta(z)
        p = jax.tree.map(jnp.add, theta0, delta)
        accuracy = ((1.0 - mix) * answer_accuracy(bed.apply_fn, p, ev_base)
                    + mix * answer_accuracy(bed.apply_fn, p, ev_other))
        return dict(measure(land, delta, basis), harm_rate=harm_rate(bed.lang, bed.apply_fn, p, bed.harm_eval),
                    task_accuracy=accuracy, s_part=s_part(basis, lam, delta))

    def segment(carry, count):
        carry = jax.lax.fori_loop(0, count, one_step, carry)
        return carry, record(carry[0])

    rec = adam_record_steps(cfg)
    _, out = jax.lax.scan(segment, (spec.init, spec.state0, jnp.zeros((), jnp.int32)),
                          jnp.asarray(np.diff(rec, prepend=0)))
    return dict(steps=jnp.asarray(rec, out["align_increase"].dtype), **out)

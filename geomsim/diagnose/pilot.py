"""A pilot: a few real fine-tuning steps before the forecast, to check and rescale it.

`--pilot-steps N` runs the optimizer the diagnosis forecasts (gd, adam, adamw as optax
builds them; gradient flow as gd steps of size lr) for N steps from theta0 and records the
measured `Delta L_A` and `L_F` after each. Then, per forecast method, at the pilot's time
`t_N = N lr`:

- the pilot crossed the threshold: its first crossing is measured, not forecast, and it
  is the verdict (the interval collapses to it);
- otherwise the method's curve is rescaled by `measured(t_N) / forecast(t_N)` (the
  simplest pilot a team can afford; on the testbed's validation runs it lifted the
  Gauss-Newton and adam_sign forecasts from 20% / 25% to 39% / 54% within 2x with a pilot
  of 5% of the forecast crossing, and left the quartic bound's and alignment-risk's
  shape-wrong curves worse: benchmarks/RESULTS.md, "What a pilot would buy"), and its
  crossing after `t_N` is the rescaled forecast.

The calibrated interval (geomsim.diagnose.verdict) is of zero-step forecasts, so a pilot
never moves the verdict later: its early end becomes the earliest of the calibrated early
end and the rescaled crossings. A pilot is a real fine-tune and costs what N steps cost;
the report gives N as a fraction of the zero-step point forecast's steps (the issue's
budget is 5%) and says when it is more.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from geomsim.diagnose.model import AlignedModel
from geomsim.landscapes.base import Landscape
from geomsim.theory.laws import first_crossing

BUDGET = 0.05  # of the zero-step forecast's steps: the pilot a team can afford (issue 19)


class PilotSettings(NamedTuple):
    """What the pilot's program is compiled for (the step count is its scan length)."""

    steps: int
    optimizer: str
    minibatch: bool


class PilotCurve(NamedTuple):
    """After each of the pilot's steps n = 1..N: `Delta L_A(n)` and `L_F(n)` (nats)."""

    align_increase: Float[Array, " n"]
    task_loss: Float[Array, " n"]


class PilotInputs(NamedTuple):
    """The optimizer's numbers, program inputs (a new value recompiles nothing)."""

    lr: Array
    adam_eps: Array
    weight_decay: Array
    b1: Array
    b2: Array


def pilot_optimizer(name: str, x: PilotInputs) -> optax.GradientTransformation:
    """The fine-tune the diagnosis forecasts, as optax builds it (flow: gd steps of size lr)."""
    if name == "adam":
        return optax.adam(x.lr, b1=x.b1, b2=x.b2, eps=x.adam_eps)
    if name == "adamw":
        return optax.adamw(x.lr, b1=x.b1, b2=x.b2, eps=x.adam_eps, weight_decay=x.weight_decay)
    return optax.sgd(x.lr)


def _step_loss(model: Landscape | AlignedModel, minibatch: bool):
    """`loss(params, n)`: the task loss step n descends (one task batch, in turn, with
    `minibatch`; else the full task loss)."""
    if not minibatch or isinstance(model, Landscape):
        return lambda params, _n: model.task_loss(params)
    batches = model.task_batches
    if batches.stacked:
        return lambda params, n: model.batch_loss(params, jax.tree.map(lambda d: d[n % batches.count], batches.data))
    branches = [lambda p, b=b: model.batch_loss(p, b) for b in batches.data]
    return lambda params, n: jax.lax.switch(n % batches.count, branches, params)


@eqx.filter_jit
def run_pilot(s: PilotSettings, model: Landscape | AlignedModel, x: PilotInputs) -> PilotCurve:
    """N steps of the optimizer from theta0 in one program (`lax.scan`)."""
    theta0 = model.theta0 if isinstance(model, Landscape) else model.params
    opt = pilot_optimizer(s.optimizer, x)
    loss = _step_loss(model, s.minibatch)
    a0 = model.align_loss(theta0)

    def step(carry, n):
        params, state = carry
        grads = jax.grad(loss)(params, n)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), (model.align_loss(params) - a0, model.task_loss(params))

    _, (align, task) = jax.lax.scan(step, (theta0, opt.init(theta0)), jnp.arange(s.steps))
    return PilotCurve(align, task)


def _loglog(times: np.ndarray, curve: np.ndarray, t: float) -> float:
    """A forecast curve at t (log-log interpolation between its samples; its first
    sample's value scaled by (t / t_0)^2 below them, the onset's t^2; nan above them)."""
    ok = np.isfinite(curve) & (curve > 0)
    if not ok.any() or t > times[-1]:
        return math.nan
    if t <= times[ok][0]:
        return float(curve[ok][0] * (t / times[ok][0]) ** 2)
    return float(np.exp(np.interp(np.log(t), np.log(times[ok]), np.log(curve[ok]))))


def pilot_report(curve: PilotCurve, lr: float, threshold: float, times, curves: dict[str, Any],
                 t_fail: dict[str, float]) -> dict[str, Any]:
    """The pilot's measured curve and, per method, its forecast at `t_N`, the ratio and the
    rescaled crossing (see the module docstring); `crossed_step` is the measured first
    crossing (None if the pilot stayed below the threshold)."""
    align = np.asarray(curve.align_increase, dtype=float)
    steps = align.shape[0]
    t_n = steps * lr
    above = np.flatnonzero(align >= threshold)
    crossed = int(above[0]) + 1 if above.size else None
    times = np.asarray(times, dtype=float)
    methods = {}
    for name, values in curves.items():
        values = np.asarray(values, dtype=float)
        at_pilot = _loglog(times, values, t_n)
        ratio = align[-1] / at_pilot if at_pilot > 0 and align[-1] > 0 else math.nan
        rescaled = math.inf
        if math.isfinite(ratio):  # from the pilot's own point on, log-log interpolated as every t_fail
            later = times > t_n
            rescaled = float(first_crossing(np.r_[t_n, times[later]], np.r_[align[-1], ratio * values[later]],
                                            threshold))
        methods[name] = {"forecast_at_pilot": at_pilot, "ratio": ratio, "t_fail_rescaled": rescaled,
                         "t_fail": t_fail.get(name, math.nan)}
    return {"steps": steps, "t": t_n, "align_increase": align.tolist(),
            "task_loss": np.asarray(curve.task_loss, dtype=float).tolist(),
            "crossed_step": crossed, "methods": methods}


def with_pilot(chosen: dict[str, Any], pilot: dict[str, Any], lr: float, stepped: bool,
               examples_per_step: int | None) -> dict[str, Any]:
    """The verdict after a pilot: the measured crossing if the pilot crossed, else the
    zero-step verdict with its early end moved to the earliest rescaled crossing where
    that is earlier (never later); `pilot_steps` set. Sets `pilot["moved_verdict"]` and
    `pilot["budget"]` (N / the zero-step point forecast's steps)."""
    out = dict(chosen, pilot_steps=pilot["steps"])
    point_steps = chosen["t_fail"] / lr
    pilot["budget"] = pilot["steps"] / point_steps if point_steps > 0 else math.inf
    pilot["moved_verdict"] = False

    def steps(t):
        return t / lr if stepped else None

    def examples(t):
        return steps(t) * examples_per_step if stepped and examples_per_step and math.isfinite(t) else None

    if pilot["crossed_step"] is not None:
        t = pilot["crossed_step"] * lr
        out.update(method="pilot (measured)", t_fail=t, t_fail_low=t, t_fail_high=t, steps=steps(t),
                   steps_low=steps(t), steps_high=steps(t), examples_low=examples(t), calibration=None,
                   resampled=False)
        pilot["moved_verdict"] = True
        return out
    rescaled = {name: m["t_fail_rescaled"] for name, m in pilot["methods"].items()}
    name = min(rescaled, key=rescaled.get)
    if rescaled[name] < chosen["t_fail_low"]:
        t = rescaled[name]
        out.update(method=f"{name} (pilot-rescaled)", t_fail_low=t, steps_low=steps(t), examples_low=examples(t))
        pilot["moved_verdict"] = True
    return out

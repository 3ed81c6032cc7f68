"""Which defense holds: the diagnosis's bounded forecast under each defense, and the task
progress each one keeps (`report.json`'s `defenses`, a table in `report.md`).

Each defense changes the fine-tune, so its local model (docs/theory.md, section 9):

    none                  the diagnosis's own bounded forecast
    static_projection     `optax.chain(optimizer, static_projection(S0))`: the step is projected
                          off S0 (the AIC's top-k alignment eigenvectors): P H_F P and P g for
                          GD and flow, `P u` for Adam
    curvature_projection  the same off S0 + the top `--defense-growth` directions of
                          D^3 L_A[u] along the projected first step (`geomsim.defenses.
                          curvature_projection`, measured here to a 1e-2 residual)
    replay                `L_F + beta L_A` (alignment data replayed with weight `--replay`)

`tracked_projection` is not forecast: it re-solves S along the path, which a local model at
theta0 cannot see (to the local model's order it is `static_projection`); nor is `replay` for
Adam (`NOT_FORECAST_ADAM`: measured, its forecast was the undefended one).

Each row: the forecast crossing `t_fail`, its delay over `none`, and at `t_ref` (none's
crossing, or the horizon when it never crosses) `Delta L_A` and `Delta L_F` on the same local
models (`Delta L_F` from the same Krylov space: `geomsim.theory.forecast.task_change_gd`),
`task_progress` = that `Delta L_F` over none's. The recommendation is the defense with the
latest crossing among those keeping at least `--min-task-progress` of none's task progress.
The forecasts are uncalibrated (the shipped calibration is of undefended fine-tunes).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array

from geomsim.defenses import curvature_projection, project_off
from geomsim.diagnose.model import AlignedModel
from geomsim.diagnose.products import products, second_moment
from geomsim.landscapes.base import Landscape
from geomsim.theory.forecast import (
    AdamModel,
    LocalModels,
    adam_model,
    adam_sign,
    adam_task,
    defended_products,
    local_models,
    quadratic_flow,
    quadratic_gd,
    task_change_flow,
    task_change_gd,
    time_to_failure,
)

DEFENSES = ("static_projection", "curvature_projection", "replay")
NOT_FORECAST = {"tracked_projection": "re-solves S along the path, which a local model at theta0 does not see "
                                      "(to its order it is static_projection)"}
# Adam's flow-limit model moves along a fixed `u`: replay enters it only through `beta grad L_A`,
# which vanishes at a stationary aligned model, while its restoring force `beta H_A delta` grows
# along the path and flips the sign of Adam's steps in S. Measured on the 12 testbed points
# (python -m paper_repro --only testbed_defenses): the replay forecast equalled the undefended
# one to rounding, while replay's measured damage at step 200 was 3e-5-7e-3 nats against
# 4e-3-2.4 undefended. So it is not forecast for Adam (the model supports it: adam_model's replay).
NOT_FORECAST_ADAM = {"replay": "acts through its restoring force beta H_A delta along the path, which Adam's "
                               "flow-limit model (a fixed step direction) does not have; at a stationary aligned "
                               "model its forecast is the undefended one"}
GROWTH_STREAM = 5  # fold_in(key, 5): the growth directions' Lanczos start (the AIC uses the key itself)
# The growth solve as the testbed's defenses run it (tracked_tol, tracked_matvecs): a 1e-2 residual
# in at most 40 third-derivative products (each about two HVPs).
GROWTH_TOL, GROWTH_MATVECS = 1e-2, 40


def forecastable(optimizer: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """`(the defenses the table forecasts for this optimizer, {defense: why not} for the rest)`."""
    if optimizer in ("adam", "adamw"):
        return tuple(d for d in DEFENSES if d not in NOT_FORECAST_ADAM), {**NOT_FORECAST, **NOT_FORECAST_ADAM}
    return DEFENSES, dict(NOT_FORECAST)


class Settings(NamedTuple):
    """What the defense program compiles for (static)."""

    names: tuple[str, ...]
    growth: int
    krylov: int
    optimizer: str
    task_model: str
    operator: str
    minibatch: bool


def bounded_curves(optimizer: str, model: LocalModels | AdamModel, times, lr, replay=0.0) -> tuple[Array, Array]:
    """`(Delta L_A, Delta L_F)` at `times` of the bounded method for `optimizer`: Adam's model,
    GD on the local models (at whole steps `floor(t / lr)` where some `lr h >= 1`: there the
    iterates alternate and `(1 - lr h)^n` is defined at whole steps only), or gradient flow."""
    if isinstance(model, AdamModel):
        return adam_sign(model, times), adam_task(model, times)
    if optimizer == "gd":
        steps = times / lr
        steps = jnp.where(jnp.any(lr * model.ritz_values >= 1), jnp.floor(steps), steps)
        return quadratic_gd(model, steps, lr), task_change_gd(model, steps, lr, replay)
    return quadratic_flow(model, times), task_change_flow(model, times, replay)


def defended_models(s: Settings, model: Landscape | AlignedModel, basis, key, replay, adam_eps, weight_decay
                    ) -> dict[str, LocalModels | AdamModel]:
    """The local model (LocalModels for gd and flow, AdamModel for adam and adamw) of the
    fine-tune under each defense in `s.names` (`none` included: no projection, no replay);
    `basis`: S0 as `(k, d)` rows. Pure: jits and vmaps over models."""
    if not s.names:
        return {}
    pieces = products(model, s.task_model, s.operator)
    tree = model.theta0 if isinstance(model, Landscape) else model.params
    unravel = ravel_pytree(tree)[1]
    adam = s.optimizer in ("adam", "adamw")
    second = second_moment(model, pieces.grad, s.minibatch) if adam else None
    replay = jnp.asarray(replay, pieces.grad.dtype)  # float32 models stay float32 (their jvps need it)
    dtype = pieces.grad.dtype
    width = basis.shape[0] + s.growth  # every defense's projection as rows of one shape (zero rows: no-ops)
    rows, betas = [], []
    for name in s.names:
        pad = jnp.zeros((width, pieces.grad.shape[0]), dtype)
        if name == "static_projection":
            pad = pad.at[: basis.shape[0]].set(basis.astype(dtype))
        elif name == "curvature_projection":
            _, pad, _ = curvature_projection(
                pieces.align_operator_at, tree, unravel(pieces.grad), basis.astype(dtype), s.growth,
                jax.random.fold_in(key, GROWTH_STREAM), tol=GROWTH_TOL, max_matvecs=GROWTH_MATVECS)
        rows.append(pad)
        betas.append(replay if name == "replay" else jnp.zeros((), dtype))
    decay = weight_decay if s.optimizer == "adamw" else 0.0

    def one(args):
        rows, beta = args

        def projector(v):
            return project_off(rows, v)

        if adam:
            # E_b[(g_b + beta ga)^2] = E_b[g_b^2] + 2 beta ga g + beta^2 ga^2 (E_b[g_b] = g, same weights)
            replayed = second + 2 * beta * pieces.align_grad * pieces.grad + beta**2 * pieces.align_grad**2
            return adam_model(pieces.align_matvec, pieces.hessian_task_matvec, pieces.align_grad, pieces.grad,
                              replayed, pieces.params, adam_eps, decay, projector, beta)
        matvec, grad = defended_products(pieces.task_matvec, pieces.align_matvec, pieces.grad, pieces.align_grad,
                                         projector, beta)
        return local_models(s.krylov)(matvec, pieces.align_matvec, grad, pieces.align_grad)

    # One traced (and compiled) model build for all defenses, run one after another (lax.map,
    # not vmap: a vmap would hold every defense's activations at once). Unrolled per defense, the
    # 12-parameter example's cold diagnosis took 12.1 s, mapped 10.2-11.5 s (single runs; 6.1 s
    # without the table: the rest is the growth solve's and the curves' compilation).
    stacked = jax.lax.map(one, (jnp.stack(rows), jnp.stack(betas)))
    return {name: jax.tree.map(lambda x, i=i: x[i], stacked) for i, name in enumerate(s.names)}


@eqx.filter_jit
def defense_program(s: Settings, model: Landscape | AlignedModel, undefended: LocalModels | AdamModel, basis, key,
                    times, t_ref, lr, threshold, replay, adam_eps, weight_decay) -> dict[str, dict[str, Array]]:
    """Per defense (and `none`, from the diagnosis's own models): `{t_fail, align_at_ref,
    task_at_ref, curve}` in one program."""
    models = {"none": undefended, **defended_models(s, model, basis, key, replay, adam_eps, weight_decay)}
    out = {}
    for name, local in models.items():
        beta = replay if name == "replay" else 0.0
        align, task = bounded_curves(s.optimizer, local, jnp.append(times, t_ref), lr, beta)  # t_ref last
        curve = align[:-1]
        out[name] = {"t_fail": time_to_failure(times, curve, threshold), "align_at_ref": align[-1],
                     "task_at_ref": task[-1], "curve": curve}
    return out


def defense_table(measured: dict[str, dict[str, Any]], t_ref: float, reference: str, min_progress: float,
                  replay: float, not_forecast: dict[str, str] | None = None) -> dict[str, Any]:
    """The report's `defenses` entry from the program's host values: rows, the
    recommendation and its reason."""
    none = measured["none"]
    base_task, base_fail = float(none["task_at_ref"]), float(none["t_fail"])
    rows = []
    for name in sorted(measured, key=lambda n: (n != "none", DEFENSES.index(n) if n in DEFENSES else 0)):
        m = measured[name]
        t_fail, task = float(m["t_fail"]), float(m["task_at_ref"])
        rows.append({
            "defense": name,
            "t_fail": t_fail,
            "delay": t_fail / base_fail if math.isfinite(base_fail) else None,
            "align_at_ref": float(m["align_at_ref"]),
            "task_at_ref": task,
            # a task model that does not fall (no progress to keep) has no ratio
            "task_progress": task / base_task if base_task < 0 else None,
            "replay": replay if name == "replay" else None,
        })
    keeps = [r for r in rows if r["defense"] != "none" and (r["task_progress"] or 0.0) >= min_progress]
    best = max(keeps, key=lambda r: (r["t_fail"], r["task_progress"]), default=None)
    if best is None:
        pick, why = None, (f"no defense keeps {min_progress:.0%} of the undefended task progress at t_ref")
    elif not best["t_fail"] > base_fail:
        pick, why = None, ("no defense that keeps the task progress delays the forecast crossing"
                           if math.isfinite(base_fail) else "the undefended fine-tune is not forecast to cross "
                           "within the horizon")
    else:
        pick = best["defense"]
        when = "never within the horizon" if not math.isfinite(best["t_fail"]) else f"at t = {best['t_fail']:.4g}"
        why = (f"the latest forecast crossing ({when}, against t = {base_fail:.4g} undefended) among the defenses "
               f"keeping >= {min_progress:.0%} of the task progress ({best['task_progress']:.0%} at t_ref)")
    return {"method": reference, "t_ref": t_ref, "min_task_progress": min_progress, "rows": rows,
            "recommended": pick, "reason": why, "not_forecast": NOT_FORECAST if not_forecast is None else not_forecast}


def defense_markdown(table: dict[str, Any] | None) -> str:
    """The report's section (empty without a table)."""
    if table is None:
        return ""

    def fmt(v, pct=False):
        if v is None:
            return "-"
        if pct:
            return f"{v:.0%}"
        return "never" if not np.isfinite(v) else f"{v:.4g}"

    lines = ["| defense | t_fail | delay | Delta L_A at t_ref | Delta L_F at t_ref | task progress kept |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in table["rows"]:
        name = r["defense"] + (f" (beta = {r['replay']:g})" if r["replay"] is not None else "")
        lines.append(f"| {name} | {fmt(r['t_fail'])} | {fmt(r['delay'])} | {fmt(r['align_at_ref'])} | "
                     f"{fmt(r['task_at_ref'])} | {fmt(r['task_progress'], pct=True)} |")
    pick = f"**{table['recommended']}**" if table["recommended"] else "none of them"
    skipped = "; ".join(f"`{k}` is not forecast: it {v}" for k, v in table["not_forecast"].items())
    return ("\n## Which defense holds\n\n" + "\n".join(lines) + "\n\n"
            f"Recommended: {pick}: {table['reason']}. The forecasts are `{table['method']}` on each defended "
            f"fine-tune, uncalibrated; t_ref = {table['t_ref']:.4g}. {skipped}."
            + (f" Note: {table['note']}." if table.get("note") else "") + "\n")

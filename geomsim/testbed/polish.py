"""Polishing an aligned model to a stationary point of its alignment loss.

An AdamW-trained model is not at a stationary point of `L_A` (c1 = -grad L_A . g
!= 0), and minimising `L_A` alone with L-BFGS or long gradient descent wanders
along its flat directions far enough to destroy the model's benign behaviour
(measured: benign accuracy 100% -> 0% after moving 1.4-12 in parameter norm).
What we want is the nearest point where

    the calibrated refusal constraints hold:  s_i(theta) = logit(target)  (harmful prompts i)
    the benign outputs are held:              b_j(theta) = b_j(theta_aligned)  (benign answer tokens j)

(`s`, `b`: log-odds of REFUSE / of the reference answer token).  There `L_A`
(the binary KL of `tasks.refusal_kl`) is exactly 0 with zero gradient.  With
m = a few hundred constraints and d = tens of thousands of parameters, Gauss-
Newton with the minimum-norm step `delta = -J^T (J J^T + damping)^-1 r` solves
it to machine precision in ~8 steps; the m x d Jacobian is built from per-example
gradients (each residual depends on one example), one batched backward pass,
not m of them.  (optimistix's Gauss-Newton would build J through the whole
residual function: measured 7 s per step against 0.25 s here.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

ResidualGroup = tuple[Callable[[PyTree, Any], Array], Any]
STEP_FRACTIONS = (1.0, 0.5, 0.25, 0.125)


def _stack_rows(tree: PyTree, count: int) -> Float[Array, "m d"]:
    """Per-example Jacobian pytree (leading example axes) -> `(m, d)` rows."""
    leaves = jax.tree.leaves(tree)
    return jnp.concatenate([leaf.reshape(count, -1) for leaf in leaves], axis=1)


def gauss_newton(groups: Sequence[ResidualGroup], params: PyTree, steps: int, damping: float = 1e-10,
                 tol: float = 0.0) -> tuple[PyTree, Float[Array, " steps"]]:
    """Minimum-norm Gauss-Newton on per-example residuals.

    Args:
        groups: `(residual_fn, examples)` pairs; `residual_fn(params, example)`
            returns the residuals `(r,)` (or a scalar) of one example, and
            `examples` is a pytree with a leading example axis.  Mask a residual
            with `jnp.where(mask, r, 0)`: its Jacobian row is then 0 as well.
        params: start point (any pytree of float arrays).
        steps: at most this many Gauss-Newton steps.
        damping: Tikhonov term relative to the mean diagonal of `J J^T`.
        tol: stop once `||r|| <= tol` (0: take every step).

    Returns:
        The polished params and the residual norm `||r||` before each step
        (`(steps,)`; nan for the steps not taken).
    """
    flat0, unravel = ravel_pytree(params)

    def residuals_and_rows(flat):
        p = unravel(flat)
        res, rows = [], []
        for fn, examples in groups:
            r = jax.vmap(fn, in_axes=(None, 0))(p, examples)
            jac = jax.vmap(jax.jacrev(fn), in_axes=(None, 0))(p, examples)
            # Flatten the Jacobian pytree in ravel_pytree's leaf order.
            count = r.size
            res.append(r.reshape(count))
            rows.append(_stack_rows(jac, count))
        return jnp.concatenate(res), jnp.concatenate(rows)

    def residual_norm(flat):
        p = unravel(flat)
        return jnp.sqrt(sum(jnp.sum(jax.vmap(fn, in_axes=(None, 0))(p, ex) ** 2) for fn, ex in groups))

    def step(carry):
        flat, norm, i, history = carry
        r, jac = residuals_and_rows(flat)
        gram = jac @ jac.T
        scale = jnp.maximum(jnp.trace(gram) / gram.shape[0], 1e-30)
        update = jac.T @ jnp.linalg.solve(gram + damping * scale * jnp.eye(gram.shape[0], dtype=gram.dtype), r)
        # Far from the solution a full step can overshoot: take the best of a few
        # step fractions (near it, the full step wins and convergence is quadratic).
        trials = jnp.stack([residual_norm(flat - f * update) for f in STEP_FRACTIONS])
        best = jnp.argmin(trials)
        new = flat - jnp.asarray(STEP_FRACTIONS, flat.dtype)[best] * update
        return new, trials[best], i + 1, history.at[i].set(jnp.linalg.norm(r))

    def going(carry):
        _, norm, i, _ = carry
        return (i < steps) & (norm > tol)

    start = (flat0, residual_norm(flat0), jnp.zeros((), jnp.int32), jnp.full((steps,), jnp.nan, flat0.dtype))
    flat, _, _, history = jax.lax.while_loop(going, step, start)
    return unravel(flat), history

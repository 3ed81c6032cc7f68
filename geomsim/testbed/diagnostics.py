"""Curvature diagnostics of the aligned transformer, before any fine-tuning.

Per seed: the alignment operator (Fisher of the refusal prediction, or the
Hessian of `L_A`), its top eigenpairs (Lanczos) and spectral density (SLQ),
the rank holding 90% of its trace.  Per (task, seed): the AIC quantities of the
fine-tuning task against S (eps, gamma in both conventions, overlap score, the
quartic law's leading term and its AIC bounds), the exact Taylor coefficients c1..c4 of `Delta L_A(t)` along
gradient flow (Taylor-mode autodiff through the transformer), and the second-
order prediction of the S-displacement, `P_S delta(t) ~= -t P_S g + t^2/2
P_S H_F g`.  All vmapped over seeds (and tasks): one compiled program each.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from geomsim.curvature import eigsh, fisher_operator, hessian_operator, spectral_density
from geomsim.landscapes import FunctionLandscape
from geomsim.tasks import REFUSE, answer_loss
from geomsim.testbed.models import MODELS
from geomsim.testbed.stages import Testbed, stacked_tasks
from geomsim.testbed.streams import Stream
from geomsim.theory import Subspace, aic, align_coefficients

MASS = 0.9


class Spectrum(eqx.Module):
    """Alignment operator at the aligned model (one seed; vmapped: leading seed axis).

    eigenvalues `(n,)` descending, residuals `(n,)`, basis `(k, d)` (rows spanning S),
    trace (SLQ estimate), rank90 (smallest r with top-r mass >= 90% of the
    trace; n + 1 if the computed top-n do not reach it), density nodes / weights
    (SLQ quadrature, `(probes, m)`).
    """

    eigenvalues: Float[Array, " n"]
    residuals: Float[Array, " n"]
    basis: Float[Array, "k d"]
    trace: Float[Array, ""]
    rank90: Array
    nodes: Float[Array, "p m"]
    weights: Float[Array, "p m"]


def alignment_operator(bed: Testbed, params: PyTree):
    """The curvature operator defining S: Fisher of the first-answer distribution on
    harmful prompts (`operator = "fisher"`) or the Hessian of `L_A`."""
    if bed.config.operator == "hessian":
        return hessian_operator(lambda p: bed.align_loss(p), params)
    prompts = bed.harm_eval.tokens[:, : bed.lang.answer_start]
    targets = jnp.full(prompts.shape[:1], REFUSE)

    def first_logits(p, inputs):
        return bed.apply_fn(p, inputs)[:, -1, :]

    return fisher_operator(first_logits, params, (prompts, targets))


def spectrum(bed: Testbed, params: PyTree) -> Spectrum:
    """Top eigenpairs, SLQ trace and the 90%-mass rank, for every seed."""
    cfg = bed.config
    n = max(4 * cfg.rank, cfg.rank + 1)

    def one(p, key):
        op = alignment_operator(bed, p).linearize()
        k_eig, k_slq = jax.random.split(key)
        eig = eigsh(n, tol=1e-4)(op, k_eig)
        dens = spectral_density(cfg.slq_probes, cfg.lanczos_iters)(op, k_slq)
        trace = dens.moment(1)[0] * op.dim
        mass = jnp.cumsum(jnp.maximum(eig.eigenvalues, 0.0)) / trace
        rank90 = jnp.where(jnp.any(mass >= MASS), jnp.argmax(mass >= MASS) + 1, n + 1)
        return Spectrum(
            eigenvalues=eig.eigenvalues, residuals=eig.residuals, basis=eig.eigenvectors[: cfg.rank],
            trace=trace, rank90=rank90, nodes=dens.nodes, weights=dens.weights,
        )

    return jax.jit(jax.vmap(one))(params, bed.seed_keys(Stream.SPECTRUM))


def task_diagnostics(bed: Testbed, params: PyTree, spec: Spectrum, taylor_order: int = 4) -> dict[str, Array]:
    """Per (task, seed): AIC quantities against S, exact Taylor c1..c`taylor_order`,
    and the vectors `P_S g`, `P_S H_F g` (in S coordinates) for the S-displacement
    prediction.  Arrays have leading axes `(task, seed)`."""
    cfg = bed.config
    train_data, _ = stacked_tasks(bed)

    def one(p, basis, lam, key, data):
        def task_loss(q):
            return answer_loss(bed.apply_fn, q, data)

        # Every AIC quantity through the library's measurement, against this seed's S
        # (the spectrum above: one S per seed for the diagnostics and the fine-tunes);
        # c4 is its leading term (1/8) (H_F g)^T H_A (H_F g).  The exact Taylor
        # coefficients c1..c_order come from `align_coefficients` below, so aic skips
        # c3 (its written-out third derivatives compile slower than that pass).
        res = aic(
            lambda q: bed.align_loss(q), task_loss, p, k=cfg.rank, key=key, subspace=Subspace(basis, lam),
            trace_samples=0, window=False, third_order=False,
        )
        land = FunctionLandscape(theta0=p, align_fn=bed.align_loss, task_fn=task_loss)
        return dict(
            eps=res.eps, coupling=res.coupling, coupling_fisher=res.coupling_fisher,
            overlap=res.eps**2,  # ||P_S u||^2 / ||u||^2 of the first update u = -g, as the sweep's law runs
            grad_norm=res.grad_norm, align_grad_norm=res.align_grad_norm,
            sharpness=res.sharpness, c4_leading=res.c4, c4_bound=res.c4_bound, c4_bound_fisher=res.c4_bound_fisher,
            taylor=align_coefficients(land, taylor_order, MODELS[cfg.model].taylor_method),
            s_grad=res.grad_coords, s_hg=res.task_hg_coords,
        )

    # One compiled program (tasks share shapes), called per task: a vmap over
    # tasks as well would multiply the peak memory of the Taylor-mode pass.
    per_task = jax.jit(lambda ps, bs, ls, ks, data: jax.vmap(lambda p, b, lam, k: one(p, b, lam, k, data))(
        ps, bs, ls, ks))
    keys = bed.seed_keys(Stream.DIAGNOSTICS)
    results = [
        per_task(params, spec.basis, spec.eigenvalues[:, : cfg.rank], keys,
                 jax.tree.map(lambda x, i=i: x[i], train_data))
        for i in range(len(cfg.finetune_tasks))
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *results)

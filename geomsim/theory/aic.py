"""Alignment Instability Condition (AIC) diagnostics for any JAX model.

`aic(align_loss, task_loss, params, batches, k=...)` measures, matrix-free,
every quantity of `shared/theory.md` at the aligned point `params`:

* the top of the alignment spectrum (Lanczos on the alignment operator: the
  Hessian of `L_A` by default, or any `CurvatureOperator`, e.g. its GGN or
  Fisher) and S = span of its top-k eigenvectors;
* concentration: `sharpness = lambda_k`, `mu = lambda_{k+1}`, `gap_ratio =
  mu / lambda_k`, the tail mass `sum_{j>k} lambda_j = tr((I-P_S) A (I-P_S))`
  (XTrace / XNysTrace), and `rank`, the gap-detected dimension of S;
* initial orthogonality `eps = ||P_S g|| / ||g||` with `g = grad L_F`;
* coupling in both conventions: `coupling = ||P_S H_F g||` (Hessian
  convention) and `coupling_fisher = ||F^(1/2) P_S H_F g||` (paper's,
  F = `fisher` if given, else the alignment operator);
* the Taylor coefficients of `Delta L_A(t)` along gradient flow: exact c1, c2,
  c3 (they need only Hessian- and third-derivative-vector products) and the
  quartic law's leading term `c4 = (1/8) (H_F g)^T H_A (H_F g)` (the whole c4
  when `grad L_A = 0` and `L_A`, `L_F` have no third/fourth-order terms along
  the path), with the AIC bounds `lambda gamma^2 / 8` and `gamma_F^2 / 8`;
* the predicted curve `c1 t + c2 t^2 + c3 t^3 + c4 t^4`, the quartic time to
  failure `(tau / c4)^(1/4)`, and the polynomial's first crossing of tau within
  the expansion window `t < 1 / ||H_F||`.

The Taylor coefficients always use the Hessian of `L_A` (they are derivatives
of the loss); only S, the spectrum and `coupling_fisher` follow `operator`.
Units: losses in nats (or the losses' units), t in gradient-flow time
(steps x learning rate).  The result is an `equinox.Module` (a pytree: it
jits and vmaps) with `to_dict` / `to_json` / `from_dict`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from geomsim.curvature.batches import BatchSet, as_batches, bind_batch
from geomsim.curvature.lanczos import eigsh
from geomsim.curvature.operators import CurvatureOperator, HessianOperator
from geomsim.curvature.subspace import gap_rank, overlap_score, project
from geomsim.curvature.trace import trace_estimator
from geomsim.io.jsoncodec import dumps, to_jsonable
from geomsim.landscapes.base import Landscape, flatten_displacement
from geomsim.theory.laws import polynomial_value, quartic_time_to_failure, time_to_threshold


class AICResult(eqx.Module):
    """Measured AIC quantities at one point (see the module docstring).

    Spectrum of the alignment operator A (units loss/param^2):
        eigenvalues `(n,)` top n (n >= k + 1) descending; residuals `(n,)`;
        basis `(k, d)` orthonormal rows spanning S (flat coordinates);
        sharpness `lambda_k`; mu `lambda_{k+1}`; gap_ratio `mu / lambda_k`;
        spectral_norm (largest |Ritz value| seen); rank (gap-detected dim of S);
        tail_mass `sum_{j>k} lambda_j` and tail_mass_stderr (nan if skipped);
        trace `sum_{j<=k} lambda_j + tail_mass`.
    Task geometry: grad_norm `||g||`; eps `||P_S g|| / ||g||`; coupling
        `||P_S H_F g||`; coupling_fisher `||F^(1/2) P_S H_F g||`; align_grad_norm
        `||grad L_A||`; update_overlap `||P_S u||^2 / ||u||^2` of the given update
        (nan without one); task_spectral_norm `||H_F||` and window_end
        `1 / ||H_F||` (nan if skipped).
    Laws: taylor `(5,)` = (0, c1, c2, c3, c4 leading term); c4_bound `lambda
        gamma^2 / 8`; c4_bound_fisher `gamma_F^2 / 8`; threshold tau; t_fail
        `(tau / c4)^(1/4)` (inf when c4 is at round-off level); t_threshold (first crossing of the Taylor polynomial
        within the window, inf if none); curve_time / curve (the predicted
        `Delta L_A`).
    Bookkeeping: num_matvecs (products with A, H_A, H_F, F), converged (Lanczos).
    """

    eigenvalues: Float[Array, " n"]
    residuals: Float[Array, " n"]
    basis: Float[Array, "k d"]
    sharpness: Float[Array, ""]
    mu: Float[Array, ""]
    gap_ratio: Float[Array, ""]
    spectral_norm: Float[Array, ""]
    rank: Int[Array, ""]
    tail_mass: Float[Array, ""]
    tail_mass_stderr: Float[Array, ""]
    trace: Float[Array, ""]
    grad_norm: Float[Array, ""]
    eps: Float[Array, ""]
    coupling: Float[Array, ""]
    coupling_fisher: Float[Array, ""]
    align_grad_norm: Float[Array, ""]
    update_overlap: Float[Array, ""]
    task_spectral_norm: Float[Array, ""]
    window_end: Float[Array, ""]
    taylor: Float[Array, " 5"]
    c4_bound: Float[Array, ""]
    c4_bound_fisher: Float[Array, ""]
    threshold: Float[Array, ""]
    t_fail: Float[Array, ""]
    t_threshold: Float[Array, ""]
    curve_time: Float[Array, " c"]
    curve: Float[Array, " c"]
    num_matvecs: Int[Array, ""]
    converged: Bool[Array, ""]
    k: int = eqx.field(static=True)
    operator: str = eqx.field(static=True)

    @property
    def c2(self) -> Array:
        return self.taylor[..., 2]

    @property
    def c4(self) -> Array:
        return self.taylor[..., 4]

    def predict(self, t: Any) -> Array:
        """Predicted `Delta L_A(t)` (Taylor polynomial through t^4)."""
        return polynomial_value(self.taylor, t)

    def to_dict(self, *, include_basis: bool = False) -> dict[str, Any]:
        """Plain-Python dict for strict JSON: non-finite numbers become `None` (null),
        and `nonfinite` maps each such field to what it was ("inf" means e.g. a
        threshold never crossed).  The `(k, d)` basis is left out unless
        `include_basis` (it can be large)."""
        import numpy as np

        out: dict[str, Any] = {"k": self.k, "operator": self.operator}
        nonfinite: dict[str, Any] = {}
        for field in self.__dataclass_fields__:
            if field in ("k", "operator") or (field == "basis" and not include_basis):
                continue
            value = np.asarray(jax.device_get(getattr(self, field)))
            out[field] = to_jsonable(value)
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                kinds = np.where(np.isnan(value), "nan", np.where(value > 0, "inf", "-inf"))
                nonfinite[field] = np.where(np.isfinite(value), None, kinds).tolist()
        out["nonfinite"] = nonfinite
        return out

    def to_json(self, path: str | None = None, *, include_basis: bool = False) -> str:
        """Strict JSON text of `to_dict` (also written to `path` when given)."""
        text = dumps(self.to_dict(include_basis=include_basis))
        if path is not None:
            from geomsim.io import atomic_open

            with atomic_open(path) as handle:
                handle.write(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AICResult:
        """Inverse of `to_dict` (a missing basis becomes an empty `(k, 0)` array)."""
        import numpy as np

        nonfinite = data.get("nonfinite", {})
        values = {}
        for field in cls.__dataclass_fields__:
            if field in ("k", "operator"):
                values[field] = data[field]
            elif field == "basis" and "basis" not in data:
                values[field] = jnp.zeros((data["k"], 0))
            elif field in nonfinite:  # null -> the non-finite value it stood for
                kinds = np.asarray(nonfinite[field], dtype=object)
                raw = np.asarray(data[field], dtype=object)
                values[field] = jnp.asarray(np.where(kinds == None, raw, kinds).astype(float))  # noqa: E711
            else:
                values[field] = jnp.asarray(data[field])
        return cls(**values)


# --- derivative helpers (batched means) -------------------------------------------------------------


def _mean(bs: BatchSet | None, fn: Callable[[Any], Any]) -> Any:
    return fn(None) if bs is None else bs.mean(fn)


def _grad(loss, params, bs):
    return _mean(bs, lambda b: jax.grad(bind_batch(loss, b))(params))


def _hvp(loss, params, bs, v):
    return _mean(bs, lambda b: jax.jvp(jax.grad(bind_batch(loss, b)), (params,), (v,))[1])


def _third_directional(loss, params, bs, v):
    """`D^3 L[v, v, v] = d^3/ds^3 L(params + s v)` at s = 0."""

    def one(b):
        f = bind_batch(loss, b)

        def d1(p):
            return jax.jvp(f, (p,), (v,))[1]

        def d2(p):
            return jax.jvp(d1, (p,), (v,))[1]

        return jax.jvp(d2, (params,), (v,))[1]

    return _mean(bs, one)


def _grad_second_directional(loss, params, bs, v):
    """`D^3 L[v, v] = d^2/ds^2 grad L(params + s v)` at s = 0 (a vector)."""

    def one(b):
        g = jax.grad(bind_batch(loss, b))

        def d1(p):
            return jax.jvp(g, (p,), (v,))[1]

        return jax.jvp(d1, (params,), (v,))[1]

    return _mean(bs, one)


# --- the diagnostics ------------------------------------------------------------------------------


def aic(
    align_loss: Callable,
    task_loss: Callable,
    params: PyTree,
    batches: Any = None,
    *,
    k: int,
    align_batches: Any = None,
    task_batches: Any = None,
    operator: str | CurvatureOperator = "hessian",
    fisher: CurvatureOperator | None = None,
    key: PRNGKeyArray | None = None,
    num_eigs: int | None = None,
    tol: float = 1e-8,
    krylov_dim: int | None = None,
    max_matvecs: int | None = None,
    trace_samples: int = 10,
    window: bool = True,
    threshold: float = 1e-2,
    update: PyTree | None = None,
    num_curve: int = 64,
    laws: bool = True,
    third_order: bool = True,
) -> AICResult:
    """Measure the AIC of an aligned model (pure; jit it with the losses static).

    Args:
        align_loss: `L_A(params, batch)` (or `L_A(params)` when there is no data).
        task_loss: `L_F(params, batch)` (or `L_F(params)`).
        params: the aligned point theta0 (any pytree of float arrays).
        batches: data for both losses (see `geomsim.curvature.batches`);
            `align_batches` / `task_batches` override it per loss.
        k: dimension of S, 1 <= k < d.
        operator: "hessian" (of L_A) or a `CurvatureOperator` at `params` (e.g.
            `ggn_operator(...)`, `fisher_operator(...)`) defining S and the spectrum.
        fisher: the F of `coupling_fisher` (default: the alignment operator).
        key: PRNG key of the Lanczos start and the trace probes (required).
        num_eigs: eigenpairs computed, k+1 <= n <= d (default min(d, 2k+1));
            `rank` can only be detected below n.
        tol: Lanczos relative residual tolerance.
        krylov_dim, max_matvecs: Lanczos basis size and budget (see `eigsh`);
            `krylov_dim >= d` gives an exact solve (small problems, repeated eigenvalues).
        trace_samples: probes of the tail-mass estimate (0 skips it: nan).
        window: estimate `||H_F||` (Lanczos, k=1 at both ends) for the
            expansion window; False leaves `task_spectral_norm`, `window_end` nan.
        threshold: tau, the loss increase defining failure (> 0).
        update: an optional parameter update (pytree) to score against S.
        num_curve: points of the predicted curve (>= 2).
        laws: compute the Taylor coefficients, times and curve (False leaves
            them nan: the spectrum and eps / coupling only, e.g. inside a sweep
            that has its own exact Taylor coefficients).
        third_order: compute c3 (needs third derivatives of both losses,
            about doubling compile and run time of the laws); False leaves it nan.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: must be an integer >= 1 (got {k!r})")
    if not threshold > 0:
        raise ValueError(f"threshold: must be > 0 (got {threshold})")
    if trace_samples < 0:
        raise ValueError(f"trace_samples: must be an integer >= 0 (got {trace_samples})")
    if num_curve < 2:
        raise ValueError(f"num_curve: must be an integer >= 2 (got {num_curve})")
    if key is None:
        raise ValueError("key: aic needs an explicit PRNG key, e.g. key=jax.random.key(0) (it seeds the Lanczos "
                         "start and the trace probes)")
    a_bs = as_batches(batches if align_batches is None else align_batches)
    f_bs = as_batches(batches if task_batches is None else task_batches)
    flat0, unravel = ravel_pytree(params)
    d, dtype = int(flat0.shape[0]), flat0.dtype
    if k >= d:
        raise ValueError(f"k: must be < d = {d} (got {k})")
    n = min(d, 2 * k + 1) if num_eigs is None else num_eigs
    if not k + 1 <= n <= d:
        raise ValueError(f"num_eigs: must be in [k + 1, d] = [{k + 1}, {d}] (got {n})")

    if isinstance(operator, str):
        if operator != "hessian":
            raise ValueError(f"operator: must be 'hessian' or a CurvatureOperator (got {operator!r})")
        op: CurvatureOperator = HessianOperator(params=params, batches=a_bs, loss=align_loss)
        op_name = "hessian"
    elif isinstance(operator, CurvatureOperator):
        if operator.dim != d:
            raise ValueError(f"operator: acts on dimension {operator.dim}, params have d = {d}")
        op, op_name = operator, type(operator).__name__
    else:
        raise ValueError(f"operator: must be 'hessian' or a CurvatureOperator (got {type(operator).__name__})")

    k_eig, k_trace, k_win = jax.random.split(key, 3)
    # The plain operator: hoisting the forward pass (`op.linearize()`) costs memory
    # and measured no faster per product on CPU (benchmarks/RESULTS.md).
    eig = eigsh(n, tol=tol, krylov_dim=krylov_dim, max_matvecs=max_matvecs)(op, k_eig)
    lam, basis = eig.eigenvalues, eig.eigenvectors[:k]
    matvecs = eig.num_matvecs

    def flat(tree):
        return ravel_pytree(tree)[0]

    nan = jnp.asarray(jnp.nan, dtype)
    g = flat(_grad(task_loss, params, f_bs))
    ga = flat(_grad(align_loss, params, a_bs))
    hg = flat(_hvp(task_loss, params, f_bs, unravel(g)))
    matvecs = matvecs + 1
    if laws:
        hhg = flat(_hvp(task_loss, params, f_bs, unravel(hg)))
        ha_g = flat(_hvp(align_loss, params, a_bs, unravel(g)))
        ha_hg = flat(_hvp(align_loss, params, a_bs, unravel(hg)))
        matvecs = matvecs + 3
        c1 = -ga @ g
        c2 = 0.5 * g @ ha_g + 0.5 * ga @ hg
        if third_order:
            t_a = _third_directional(align_loss, params, a_bs, unravel(g))
            d3f = flat(_grad_second_directional(task_loss, params, f_bs, unravel(g)))
            c3 = -0.5 * g @ ha_hg - t_a / 6.0 - ga @ (hhg + d3f) / 6.0
        else:
            c3 = nan
        c4 = 0.125 * hg @ ha_hg
        taylor = jnp.stack([jnp.zeros((), dtype), c1, c2, c3, c4])
    else:
        taylor = jnp.full((5,), jnp.nan, dtype)
        c4 = nan

    gnorm = jnp.linalg.norm(g)
    s_hg = project(basis, hg)
    coords = basis @ hg
    if fisher is None:
        gamma_f2 = jnp.sum(lam[:k] * coords**2)
    else:
        gamma_f2 = s_hg @ fisher.mv_flat(s_hg)
        matvecs = matvecs + 1
    coupling = jnp.linalg.norm(coords)
    coupling_fisher = jnp.sqrt(jnp.maximum(gamma_f2, 0.0))

    if trace_samples > 0:
        samples = min(trace_samples, d)

        def deflated(v):
            w = v - project(basis, v)
            w = op.mv_flat(w)
            return w - project(basis, w)

        est = trace_estimator(samples, method="xnystrace" if op.psd else "xtrace",
                              like=jnp.zeros((d,), dtype))(lambda v: deflated(v), k_trace)
        tail, tail_err = est.value, est.stderr
        matvecs = matvecs + est.num_matvecs
    else:
        tail, tail_err = nan, nan

    if window:
        task_op = HessianOperator(params=params, batches=f_bs, loss=task_loss)
        top = eigsh(1, which="largest", tol=1e-3)(task_op, k_win)
        bottom = eigsh(1, which="smallest", tol=1e-3)(task_op, jax.random.fold_in(k_win, 1))
        task_norm = jnp.maximum(jnp.abs(top.eigenvalues[0]), jnp.abs(bottom.eigenvalues[0]))
        window_end = 1.0 / task_norm
        matvecs = matvecs + top.num_matvecs + bottom.num_matvecs
    else:
        task_norm, window_end = nan, nan

    tau = jnp.asarray(threshold, dtype)
    spectral_norm = jnp.maximum(jnp.abs(lam[0]), jnp.max(jnp.abs(eig.ritz_range)))
    if laws:
        # A c4 at the round-off level of (1/8) hg^T H_A hg (e.g. gamma = 0) never fails.
        c4_floor = 64.0 * jnp.finfo(dtype).eps * spectral_norm * (hg @ hg) / 8.0
        t_fail = quartic_time_to_failure(jnp.where(c4 > c4_floor, c4, 0.0), tau)
        t_max = jnp.where(jnp.isfinite(window_end), window_end, jnp.where(jnp.isfinite(t_fail), 2.0 * t_fail, 1.0))
        t_threshold = time_to_threshold(taylor, tau, t_max)
        curve_time = t_max * jnp.logspace(-4, 0, num_curve, dtype=dtype)
    else:
        t_fail, t_threshold = nan, nan
        curve_time = jnp.full((num_curve,), jnp.nan, dtype)

    mu = lam[k]
    sharp = lam[k - 1]
    update_overlap = nan if update is None else overlap_score(basis, flat(update))
    return AICResult(
        eigenvalues=lam,
        residuals=eig.residuals,
        basis=basis,
        sharpness=sharp,
        mu=mu,
        gap_ratio=mu / sharp,
        spectral_norm=spectral_norm,
        rank=gap_rank(lam),
        tail_mass=tail,
        tail_mass_stderr=tail_err,
        trace=jnp.sum(lam[:k]) + tail,
        grad_norm=gnorm,
        eps=jnp.linalg.norm(basis @ g) / gnorm,
        coupling=coupling,
        coupling_fisher=coupling_fisher,
        align_grad_norm=jnp.linalg.norm(ga),
        update_overlap=jnp.asarray(update_overlap, dtype),
        task_spectral_norm=task_norm,
        window_end=window_end,
        taylor=taylor,
        c4_bound=sharp * coupling**2 / 8.0,
        c4_bound_fisher=gamma_f2 / 8.0,
        threshold=tau,
        t_fail=t_fail,
        t_threshold=t_threshold,
        curve_time=curve_time,
        curve=polynomial_value(taylor, curve_time),
        num_matvecs=jnp.asarray(matvecs),
        converged=eig.converged,
        k=k,
        operator=op_name,
    )


def landscape_aic(landscape: Landscape, k: int, **options: Any) -> AICResult:
    """`aic` of a `Landscape` at `theta0`, in displacement coordinates.

    Uses the landscape's cancellation-free `align_increase` as `L_A`, so the
    Taylor coefficients are exact to round-off even for tiny curvatures.  On a
    `quadratic_cubic` landscape the measured sharpness, mu, eps and coupling
    equal the configured values.  `options` go to `aic`.
    """
    zero, unravel = flatten_displacement(landscape)

    def align(x):
        return landscape.align_increase(unravel(x))

    def task(x):
        return landscape.displaced_task_loss(unravel(x))

    return aic(align, task, zero, k=k, **options)

"""Alignment Instability Condition (AIC) diagnostics for any JAX model.

`aic_factory(k, ...)` takes the static settings (matfree / optax style) and
returns a pure `measure(align_loss, task_loss, params, batches, *, key, ...)`;
`aic(align_loss, task_loss, params, batches, k=..., key=...)` is the same in
one call.  They measure, matrix-free, every quantity of `shared/theory.md` at
the aligned point `params`:

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

A known S (`Subspace(basis, eigenvalues)`, e.g. one model's spectrum shared by
the many tasks fine-tuned from it) replaces the spectrum part; the task side and
the S-part coefficients `c2_s`, `c4_s` are then measured against it.

`measure` assembles small parts, each a pure function of operators and flat
vectors: `_spectrum` (Lanczos on A, deflated trace of the tail), `_geometry`
(g, grad L_A, H_F g and their projections on S), `_window` (||H_F|| by
Lanczos), `_taylor` (c1..c4) and `_laws` (times to failure, curve).  Gradients
and Hessian-vector products are those of the `HessianOperator`s of `L_A` and
`L_F` (batch means like every operator's product); only the third derivatives
of c3 are written out here.  The PRNG key is split once into the Lanczos, the
trace-probe and the window keys.

The Taylor coefficients always use the Hessian of `L_A` (they are derivatives
of the loss); only S, the spectrum and `coupling_fisher` follow `operator`.
Units: losses in nats (or the losses' units), t in gradient-flow time
(steps x learning rate).  The result is an `equinox.Module` (a pytree: it
jits and vmaps) with `to_dict` / `to_json` / `from_dict`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from geomsim.curvature.batches import as_batches, bind_batch
from geomsim.curvature.lanczos import EigResult, eigsh
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
    S coordinates: grad_coords `(k,)` = `U g` and task_hg_coords `(k,)` = `U H_F g` for
        the rows U of `basis` (sign-dependent like the basis; `c2_s` / `c4_s` are
        the S-part's own coefficients built from them).
    Laws: taylor `(5,)` = (0, c1, c2, c3, c4 leading term); c4_bound `lambda
        gamma^2 / 8`; c4_bound_fisher `gamma_F^2 / 8`; threshold tau; t_fail
        `(tau / c4)^(1/4)` (inf when c4 is at round-off level); t_threshold (first crossing of the Taylor polynomial
        within the window, inf if none); curve_time / curve (the predicted
        `Delta L_A`).
    Bookkeeping: num_matvecs (products with A, H_A, H_F, F), converged (Lanczos).
    With a given `Subspace` (no spectrum measured): eigenvalues are its k values
    (descending), spectral_norm their largest |value|, rank k, converged True, and
    residuals, mu, gap_ratio, tail_mass, trace nan; operator is "subspace".
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
    grad_coords: Float[Array, " k"]
    task_hg_coords: Float[Array, " k"]
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

    @property
    def c2_s(self) -> Array:
        """`(1/2) (P_S g)^T A (P_S g) = (1/2) sum_i lambda_i (u_i . g)^2`: the t^2 coefficient of
        the S-part of `Delta L_A` (A's curvature on S only; units of A x grad^2)."""
        return 0.5 * jnp.sum(self.eigenvalues[..., : self.k] * self.grad_coords**2, axis=-1)

    @property
    def c4_s(self) -> Array:
        """`(1/8) (P_S H_F g)^T A (P_S H_F g)`: the theorem's t^4 coefficient of the S-part
        (equals `c4_bound_fisher` when F is A itself)."""
        return 0.125 * jnp.sum(self.eigenvalues[..., : self.k] * self.task_hg_coords**2, axis=-1)

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
            elif field in ("grad_coords", "task_hg_coords") and field not in data:  # written before they existed
                values[field] = jnp.full(np.shape(data["eps"]) + (data["k"],), jnp.nan)
            elif field in nonfinite:  # null -> the non-finite value it stood for
                kinds = np.asarray(nonfinite[field], dtype=object)
                raw = np.asarray(data[field], dtype=object)
                values[field] = jnp.asarray(np.where(kinds == None, raw, kinds).astype(float))  # noqa: E711
            else:
                values[field] = jnp.asarray(data[field])
        return cls(**values)


class Subspace(NamedTuple):
    """A known S for `measure(..., subspace=...)`: orthonormal rows `basis (k, d)` (flat
    coordinates, ravel_pytree order) and the alignment operator's eigenvalues on them
    `(k,)`, descending (e.g. one model's spectrum shared by many fine-tuning tasks)."""

    basis: Float[Array, "k d"]
    eigenvalues: Float[Array, " k"]


# --- settings -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The static settings of `aic_factory` (see there), validated once on construction."""

    k: int
    num_eigs: int | None
    tol: float
    krylov_dim: int | None
    max_matvecs: int | None
    trace_samples: int
    window: bool
    threshold: float
    num_curve: int
    laws: bool
    third_order: bool

    def __post_init__(self) -> None:
        k = self.k
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: must be an integer >= 1 (got {k!r})")
        if not self.threshold > 0:
            raise ValueError(f"threshold: must be > 0 (got {self.threshold})")
        if self.trace_samples < 0:
            raise ValueError(f"trace_samples: must be an integer >= 0 (got {self.trace_samples})")
        if self.num_curve < 2:
            raise ValueError(f"num_curve: must be an integer >= 2 (got {self.num_curve})")
        if self.num_eigs is not None and self.num_eigs < k + 1:  # the upper bound d is checked per call
            raise ValueError(f"num_eigs: must be in [k + 1, d] = [{k + 1}, d] (got {self.num_eigs})")

    def eigenpairs(self, d: int) -> int:
        """n, the number of eigenpairs to compute in dimension d (checks k and num_eigs against d)."""
        if self.k >= d:
            raise ValueError(f"k: must be < d = {d} (got {self.k})")
        n = min(d, 2 * self.k + 1) if self.num_eigs is None else self.num_eigs
        if not self.k + 1 <= n <= d:
            raise ValueError(f"num_eigs: must be in [k + 1, d] = [{self.k + 1}, {d}] (got {n})")
        return n


# --- third derivatives (batched means, like the operator's products) -------------------------------


def _batch_mean(op: HessianOperator, fn: Callable[[Any], Any]) -> Any:
    """`sum_b w_b fn(batch_b)` over `op`'s batches (`fn(None)` without data)."""
    return fn(None) if op.batches is None else op.batches.mean(fn)


def _third_directional(op: HessianOperator, v: PyTree) -> Float[Array, ""]:
    """`D^3 L[v, v, v] = d^3/ds^3 L(params + s v)` at s = 0, for the loss, point and data of `op`."""

    def one(b):
        f = bind_batch(op.loss, b)

        def d1(p):
            return jax.jvp(f, (p,), (v,))[1]

        def d2(p):
            return jax.jvp(d1, (p,), (v,))[1]

        return jax.jvp(d2, (op.params,), (v,))[1]

    return _batch_mean(op, one)


def _grad_second_directional(op: HessianOperator, v: PyTree) -> PyTree:
    """`D^3 L[v, v] = d^2/ds^2 grad L(params + s v)` at s = 0 (a pytree like `params`), for `op`'s loss."""

    def one(b):
        g = jax.grad(bind_batch(op.loss, b))

        def d1(p):
            return jax.jvp(g, (p,), (v,))[1]

        return jax.jvp(d1, (op.params,), (v,))[1]

    return _batch_mean(op, one)


def _given_subspace(subspace: Subspace, k: int, d: int, dtype) -> Subspace:
    """`subspace` checked against k and d (shapes are static: one clear error at trace time),
    its rows put in descending order of eigenvalue (a stable sort: descending input is
    returned as given), so `sharpness` is the smallest of them as for a measured S."""
    basis, lam = jnp.asarray(subspace.basis, dtype), jnp.asarray(subspace.eigenvalues, dtype)
    if basis.shape != (k, d) or lam.shape != (k,):
        raise ValueError(f"subspace: basis must be (k, d) = ({k}, {d}) rows and eigenvalues ({k},) "
                         f"(got {basis.shape} and {lam.shape})")
    order = jnp.argsort(-lam, stable=True)
    return Subspace(basis[order], lam[order])


# --- the parts ------------------------------------------------------------------------------------


def _alignment_operator(operator: str | CurvatureOperator, align_op: HessianOperator) -> tuple[CurvatureOperator, str]:
    """The operator A defining S and the spectrum, and its name for `AICResult.operator`."""
    d = align_op.dim
    if isinstance(operator, str):
        if operator != "hessian":
            raise ValueError(f"operator: must be 'hessian' or a CurvatureOperator (got {operator!r})")
        return align_op, "hessian"
    if isinstance(operator, CurvatureOperator):
        if operator.dim != d:
            raise ValueError(f"operator: acts on dimension {operator.dim}, params have d = {d}")
        return operator, type(operator).__name__
    raise ValueError(f"operator: must be 'hessian' or a CurvatureOperator (got {type(operator).__name__})")


def _spectrum(
    op: CurvatureOperator, n: int, s: _Settings, k_eig: PRNGKeyArray, k_trace: PRNGKeyArray
) -> tuple[EigResult, Float[Array, ""], Float[Array, ""], Int[Array, ""]]:
    """Top of the spectrum of A and the mass of the rest.

    Returns `(eig, tail, tail_stderr, matvecs)`: `eig` the Lanczos result, n
    eigenpairs (eigenvalues `(n,)` descending, units of A; eigenvectors `(n, d)`
    flat, the first k span S); `tail = tr((I - P_S) A (I - P_S)) = sum_{j>k}
    lambda_j` (units of A; XNysTrace for a PSD A, else XTrace, from
    min(trace_samples, d) probes) and its standard error, both nan when
    `trace_samples = 0`; `matvecs` the products with A.
    """
    # The plain operator: hoisting the forward pass (`op.linearize()`) costs memory
    # and measured no faster per product on CPU (benchmarks/RESULTS.md).
    eig = eigsh(n, tol=s.tol, krylov_dim=s.krylov_dim, max_matvecs=s.max_matvecs)(op, k_eig)
    d, dtype = op.dim, op.dtype
    if s.trace_samples == 0:
        nan = jnp.asarray(jnp.nan, dtype)
        return eig, nan, nan, eig.num_matvecs
    basis = eig.eigenvectors[: s.k]

    def deflated(v):
        w = v - project(basis, v)
        w = op.mv_flat(w)
        return w - project(basis, w)

    est = trace_estimator(min(s.trace_samples, d), method="xnystrace" if op.psd else "xtrace",
                          like=jnp.zeros((d,), dtype))(deflated, k_trace)
    return eig, est.value, est.stderr, eig.num_matvecs + est.num_matvecs


class _Geometry(eqx.Module):
    """The task gradient against S (flat vectors `(d,)`, ravel_pytree order).

    grad `g = grad L_F` (loss/param) and grad_norm `||g||`; align_grad `grad L_A`;
    task_hg `H_F g` (loss/param^3); grad_coords `U g`, task_hg_coords `U H_F g` (S
    coordinates, U the rows of the basis); eps `||P_S g|| / ||g||` (a ratio); coupling
    `||P_S H_F g||`; gamma_fisher_sq `(P_S H_F g)^T F (P_S H_F g)`; update_overlap
    `||P_S u||^2 / ||u||^2` (nan without an update); num_matvecs the products with
    H_F and F.
    """

    grad: Float[Array, " d"]
    grad_norm: Float[Array, ""]
    align_grad: Float[Array, " d"]
    task_hg: Float[Array, " d"]
    grad_coords: Float[Array, " k"]
    task_hg_coords: Float[Array, " k"]
    eps: Float[Array, ""]
    coupling: Float[Array, ""]
    gamma_fisher_sq: Float[Array, ""]
    update_overlap: Float[Array, ""]
    num_matvecs: int = eqx.field(static=True)


def _geometry(
    align_op: HessianOperator,
    task_op: HessianOperator,
    basis: Float[Array, "k d"],
    top: Float[Array, " k"],
    fisher: CurvatureOperator | None,
    update: PyTree | None,
) -> _Geometry:
    """Initial orthogonality and coupling of the task gradient to S (`basis`, with A's eigenvalues `top`).

    The Fisher weighting uses `fisher` when given, else A itself, which is
    diagonal on S: `sum_j lambda_j (u_j . H_F g)^2` needs no product.
    """
    g = task_op.ravel(task_op.gradient())
    hg = task_op.mv_flat(g)
    coords, coords_g = basis @ hg, basis @ g
    if fisher is None:
        gamma_f2, matvecs = jnp.sum(top * coords**2), 1
    else:
        s_hg = project(basis, hg)
        gamma_f2, matvecs = s_hg @ fisher.mv_flat(s_hg), 2
    gnorm = jnp.linalg.norm(g)
    overlap = jnp.nan if update is None else overlap_score(basis, task_op.ravel(update))
    return _Geometry(
        grad=g,
        grad_norm=gnorm,
        align_grad=align_op.ravel(align_op.gradient()),
        task_hg=hg,
        grad_coords=coords_g,
        task_hg_coords=coords,
        eps=jnp.linalg.norm(coords_g) / gnorm,
        coupling=jnp.linalg.norm(coords),
        gamma_fisher_sq=gamma_f2,
        update_overlap=jnp.asarray(overlap, g.dtype),
        num_matvecs=matvecs,
    )


def _taylor(
    align_op: HessianOperator, task_op: HessianOperator, geo: _Geometry, third_order: bool
) -> Float[Array, " 5"]:
    """`(0, c1, c2, c3, c4)` of `Delta L_A(t) = sum_j c_j t^j` along the gradient flow of L_F
    (c_j in loss units per unit time^j; c4 the leading term `(1/8) (H_F g)^T H_A (H_F g)`;
    c3 nan unless `third_order`).  Costs 3 Hessian-vector products (with H_F, H_A, H_A)."""
    g, ga, hg = geo.grad, geo.align_grad, geo.task_hg
    hhg = task_op.mv_flat(hg)
    ha_g = align_op.mv_flat(g)
    ha_hg = align_op.mv_flat(hg)
    c1 = -ga @ g
    c2 = 0.5 * g @ ha_g + 0.5 * ga @ hg
    if third_order:
        g_tree = task_op.unravel(g)
        t_a = _third_directional(align_op, g_tree)
        d3f = task_op.ravel(_grad_second_directional(task_op, g_tree))
        c3 = -0.5 * g @ ha_hg - t_a / 6.0 - ga @ (hhg + d3f) / 6.0
    else:
        c3 = jnp.asarray(jnp.nan, g.dtype)
    c4 = 0.125 * hg @ ha_hg
    return jnp.stack([jnp.zeros((), g.dtype), c1, c2, c3, c4])


def _window(task_op: HessianOperator, key: PRNGKeyArray) -> tuple[Float[Array, ""], Float[Array, ""], Int[Array, ""]]:
    """`(||H_F||, 1 / ||H_F||, matvecs)`: the task Hessian's norm (loss/param^2) from a loose
    (tol 1e-3) Lanczos solve at each end of its spectrum, and the end of the Taylor
    expansion's window in gradient-flow time."""
    top = eigsh(1, which="largest", tol=1e-3)(task_op, key)
    bottom = eigsh(1, which="smallest", tol=1e-3)(task_op, jax.random.fold_in(key, 1))
    norm = jnp.maximum(jnp.abs(top.eigenvalues[0]), jnp.abs(bottom.eigenvalues[0]))
    return norm, 1.0 / norm, top.num_matvecs + bottom.num_matvecs


def _laws(
    taylor: Float[Array, " 5"],
    hg: Float[Array, " d"],
    spectral_norm: Float[Array, ""],
    window_end: Float[Array, ""],
    tau: Float[Array, ""],
    s: _Settings,
) -> tuple[Float[Array, ""], Float[Array, ""], Float[Array, " c"]]:
    """`(t_fail, t_threshold, curve_time)` in gradient-flow time: the quartic law's
    `(tau / c4)^(1/4)`, the Taylor polynomial's first crossing of tau within
    `t_max` (the window end, else 2 t_fail, else 1) and `num_curve` log-spaced
    times up to `t_max` (from `1e-4 t_max`)."""
    dtype = taylor.dtype
    c4 = taylor[4]
    # A c4 at the round-off level of (1/8) hg^T H_A hg (e.g. gamma = 0) never fails.
    c4_floor = 64.0 * jnp.finfo(dtype).eps * spectral_norm * (hg @ hg) / 8.0
    t_fail = quartic_time_to_failure(jnp.where(c4 > c4_floor, c4, 0.0), tau)
    t_max = jnp.where(jnp.isfinite(window_end), window_end, jnp.where(jnp.isfinite(t_fail), 2.0 * t_fail, 1.0))
    t_threshold = time_to_threshold(taylor, tau, t_max)
    return t_fail, t_threshold, t_max * jnp.logspace(-4, 0, s.num_curve, dtype=dtype)


# --- the diagnostics ------------------------------------------------------------------------------


def aic_factory(
    k: int,
    *,
    num_eigs: int | None = None,
    tol: float = 1e-8,
    krylov_dim: int | None = None,
    max_matvecs: int | None = None,
    trace_samples: int = 10,
    window: bool = True,
    threshold: float = 1e-2,
    num_curve: int = 64,
    laws: bool = True,
    third_order: bool = True,
) -> Callable[..., AICResult]:
    """Build `measure(align_loss, task_loss, params, batches=None, *, key, ...) -> AICResult`.

    The settings are static (validated here, once); `measure` is pure in its
    array inputs (params, batches, operators, update, key), so it jits with
    the losses static (`eqx.filter_jit`) and vmaps, e.g. over keys or params.

    Args:
        k: dimension of S, 1 <= k < d.
        num_eigs: eigenpairs computed, k+1 <= n <= d (default min(d, 2k+1));
            `rank` can only be detected below n.
        tol: Lanczos relative residual tolerance.
        krylov_dim, max_matvecs: Lanczos basis size and budget (see `eigsh`);
            `krylov_dim >= d` gives an exact solve (small problems, repeated eigenvalues).
        trace_samples: probes of the tail-mass estimate (0 skips it: nan).
        window: estimate `||H_F||` (Lanczos, k=1 at both ends) for the
            expansion window; False leaves `task_spectral_norm`, `window_end` nan.
        threshold: tau, the loss increase defining failure (> 0).
        num_curve: points of the predicted curve (>= 2).
        laws: compute the Taylor coefficients, times and curve (False leaves
            them nan: the spectrum and eps / coupling only, e.g. inside a sweep
            that has its own exact Taylor coefficients).
        third_order: compute c3 (needs third derivatives of both losses,
            about doubling compile and run time of the laws); False leaves it nan.
    """
    s = _Settings(k=k, num_eigs=num_eigs, tol=tol, krylov_dim=krylov_dim, max_matvecs=max_matvecs,
                  trace_samples=trace_samples, window=window, threshold=threshold, num_curve=num_curve, laws=laws,
                  third_order=third_order)

    def measure(
        align_loss: Callable,
        task_loss: Callable,
        params: PyTree,
        batches: Any = None,
        *,
        key: PRNGKeyArray | None,
        align_batches: Any = None,
        task_batches: Any = None,
        operator: str | CurvatureOperator = "hessian",
        fisher: CurvatureOperator | None = None,
        update: PyTree | None = None,
        threshold: float | Array | None = None,
        subspace: Subspace | None = None,
    ) -> AICResult:
        """Measure the AIC at the aligned point `params` (see the module docstring).

        Args:
            align_loss: `L_A(params, batch)` (or `L_A(params)` when there is no data).
            task_loss: `L_F(params, batch)` (or `L_F(params)`).
            params: the aligned point theta0 (any pytree of float arrays).
            batches: data for both losses (see `geomsim.curvature.batches`);
                `align_batches` / `task_batches` override it per loss.
            key: PRNG key of the Lanczos start and the trace probes (required).
            operator: "hessian" (of L_A) or a `CurvatureOperator` at `params` (e.g.
                `ggn_operator(...)`, `fisher_operator(...)`) defining S and the spectrum.
            fisher: the F of `coupling_fisher` (default: the alignment operator).
            update: an optional parameter update (pytree) to score against S.
            threshold: tau for this call (default: the factory's); an array here, so one
                jitted `measure` serves every threshold without recompiling.
            subspace: a known S (`Subspace(basis, eigenvalues)`) instead of the Lanczos
                solve and the tail trace: then `eigenvalues` are those k, `operator` is
                "subspace", `rank` is k, and residuals, mu, gap_ratio, tail_mass and
                trace are nan (not measured).
        """
        if key is None:
            raise ValueError("key: aic needs an explicit PRNG key, e.g. key=jax.random.key(0) (it seeds the "
                             "Lanczos start and the trace probes)")
        a_bs = as_batches(batches if align_batches is None else align_batches)
        f_bs = as_batches(batches if task_batches is None else task_batches)
        align_op = HessianOperator(params=params, batches=a_bs, loss=align_loss)
        task_op = HessianOperator(params=params, batches=f_bs, loss=task_loss)
        n = s.eigenpairs(align_op.dim)
        dtype = align_op.dtype
        nan = jnp.asarray(jnp.nan, dtype)
        tau = jnp.asarray(s.threshold if threshold is None else threshold, dtype)

        k_eig, k_trace, k_win = jax.random.split(key, 3)
        if subspace is None:
            op, op_name = _alignment_operator(operator, align_op)
            eig, tail, tail_err, matvecs = _spectrum(op, n, s, k_eig, k_trace)
            lam, basis, residuals, converged = eig.eigenvalues, eig.eigenvectors[: s.k], eig.residuals, eig.converged
            spectral_norm = jnp.maximum(jnp.abs(lam[0]), jnp.max(jnp.abs(eig.ritz_range)))
            mu, rank = lam[s.k], gap_rank(lam)
        else:
            if not (isinstance(operator, str) and operator == "hessian"):
                raise ValueError("operator: a given subspace replaces the operator's spectrum; pass one or the other")
            basis, lam = _given_subspace(subspace, s.k, align_op.dim, dtype)
            op_name, residuals, converged, matvecs = "subspace", jnp.full((s.k,), jnp.nan, dtype), jnp.asarray(True), 0
            tail = tail_err = mu = nan
            spectral_norm, rank = jnp.max(jnp.abs(lam)), jnp.asarray(s.k)
        geo = _geometry(align_op, task_op, basis, lam[: s.k], fisher, update)
        matvecs = matvecs + geo.num_matvecs
        if s.window:
            task_norm, window_end, window_matvecs = _window(task_op, k_win)
            matvecs = matvecs + window_matvecs
        else:
            task_norm, window_end = nan, nan
        if s.laws:
            taylor = _taylor(align_op, task_op, geo, s.third_order)
            t_fail, t_threshold, curve_time = _laws(taylor, geo.task_hg, spectral_norm, window_end, tau, s)
            matvecs = matvecs + 3
        else:
            taylor = jnp.full((5,), jnp.nan, dtype)
            t_fail, t_threshold = nan, nan
            curve_time = jnp.full((s.num_curve,), jnp.nan, dtype)

        sharp = lam[s.k - 1]
        coupling = geo.coupling
        return AICResult(
            eigenvalues=lam,
            residuals=residuals,
            basis=basis,
            sharpness=sharp,
            mu=mu,
            gap_ratio=mu / sharp,
            spectral_norm=spectral_norm,
            rank=rank,
            tail_mass=tail,
            tail_mass_stderr=tail_err,
            trace=jnp.sum(lam[: s.k]) + tail,
            grad_norm=geo.grad_norm,
            eps=geo.eps,
            coupling=coupling,
            coupling_fisher=jnp.sqrt(jnp.maximum(geo.gamma_fisher_sq, 0.0)),
            align_grad_norm=jnp.linalg.norm(geo.align_grad),
            update_overlap=geo.update_overlap,
            grad_coords=geo.grad_coords,
            task_hg_coords=geo.task_hg_coords,
            task_spectral_norm=task_norm,
            window_end=window_end,
            taylor=taylor,
            c4_bound=sharp * coupling**2 / 8.0,
            c4_bound_fisher=geo.gamma_fisher_sq / 8.0,
            threshold=tau,
            t_fail=t_fail,
            t_threshold=t_threshold,
            curve_time=curve_time,
            curve=polynomial_value(taylor, curve_time),
            num_matvecs=jnp.asarray(matvecs),
            converged=converged,
            k=s.k,
            operator=op_name,
        )

    return measure


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
    threshold: float | Array = 1e-2,
    update: PyTree | None = None,
    subspace: Subspace | None = None,
    num_curve: int = 64,
    laws: bool = True,
    third_order: bool = True,
) -> AICResult:
    """Measure the AIC of an aligned model (pure; jit it with the losses static).

    One call of `aic_factory(k, num_eigs=..., ..., third_order=...)` (the
    settings, documented there) on `(align_loss, task_loss, params, batches,
    key=..., align_batches=..., task_batches=..., operator=..., fisher=...,
    update=..., subspace=...)` (the inputs, documented at its `measure`).  Use the factory to
    validate the settings once and vmap the measurement, e.g. over keys.  `threshold`
    may be traced (it is then an input of the program, not a setting).
    """
    checked = {"threshold": threshold} if isinstance(threshold, (int, float)) else {}  # validated by the factory
    measure = aic_factory(k, num_eigs=num_eigs, tol=tol, krylov_dim=krylov_dim, max_matvecs=max_matvecs,
                          trace_samples=trace_samples, window=window, num_curve=num_curve,
                          laws=laws, third_order=third_order, **checked)
    return measure(align_loss, task_loss, params, batches, key=key, align_batches=align_batches,
                   task_batches=task_batches, operator=operator, fisher=fisher, update=update, threshold=threshold,
                   subspace=subspace)


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

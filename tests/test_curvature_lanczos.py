"""Krylov eigensolvers against `eigh` on matrices with prescribed spectra
(several seeds and both float widths), on a model Hessian, under vmap, and
warm-started along a path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matfree.test_util import hermitian_matrix_from_eigenvalues

from geomsim.curvature import (
    MatrixOperator,
    eigsh,
    hessian_operator,
    operator_matvec,
    power_iteration,
    track_eigenspace,
)
from geomsim.models import MLP, as_functional, cross_entropy

D = 120
TOP = (10.0, 8.0, 6.0, 5.0, 4.0)


def _matrix(seed, dtype, top=TOP, bulk=(-1.0, 1.0), d=D):
    eigs = jnp.concatenate([jnp.asarray(top), jnp.linspace(bulk[0], bulk[1], d - len(top))]).astype(jnp.float64)
    a = hermitian_matrix_from_eigenvalues(eigs, jax.random.key(seed))
    return a.astype(dtype), np.sort(np.asarray(eigs))[::-1]


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-8), (jnp.float32, 1e-4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_matches_eigh_across_seeds_and_dtypes(seed, dtype, rtol):
    a, exact = _matrix(seed, dtype)
    tol = 1e-10 if dtype == jnp.float64 else 1e-5
    res = jax.jit(eigsh(5, tol=tol))(MatrixOperator(a), jax.random.key(seed + 10))
    assert res.eigenvalues.dtype == dtype and res.eigenvectors.dtype == dtype
    np.testing.assert_allclose(res.eigenvalues, exact[:5], rtol=rtol)
    assert bool(res.converged)
    v = np.asarray(res.eigenvectors, np.float64)
    np.testing.assert_allclose(v @ v.T, np.eye(5), atol=50 * float(jnp.finfo(dtype).eps) ** 0.5)
    true = np.linalg.norm(v @ np.asarray(a, np.float64) - np.asarray(res.eigenvalues)[:, None] * v, axis=1)
    if dtype == jnp.float64:
        # The Lanczos estimate |beta s_j| is the measured residual (full reorthogonalisation).
        np.testing.assert_allclose(res.residuals, true, rtol=1e-2, atol=1e-12)
        assert np.all(true <= 1e-10 * np.abs(exact[:5]) + 1e-12)
    assert 5 < int(res.num_matvecs) < D


def test_smallest_and_restarted_solves():
    a, exact = _matrix(3, jnp.float64, top=(3.0, 2.5), bulk=(-4.0, 1.0))
    low = jax.jit(eigsh(3, which="smallest", tol=1e-10, krylov_dim=30))(MatrixOperator(a), jax.random.key(0))
    np.testing.assert_allclose(low.eigenvalues, np.sort(exact)[:3], rtol=1e-8)
    assert np.all(np.diff(low.eigenvalues) >= 0)
    small = jax.jit(eigsh(5, tol=1e-10, krylov_dim=10))(MatrixOperator(_matrix(4, jnp.float64)[0]),
                                                          jax.random.key(1))
    assert int(small.num_restarts) > 0 and bool(small.converged)
    np.testing.assert_allclose(small.eigenvalues, TOP, rtol=1e-8)


def test_verify_measures_true_residuals_and_counts_them():
    a, _ = _matrix(5, jnp.float64)
    plain = jax.jit(eigsh(4, tol=1e-6))(MatrixOperator(a), jax.random.key(2))
    checked = jax.jit(eigsh(4, tol=1e-6, verify=True))(MatrixOperator(a), jax.random.key(2))
    v = np.asarray(checked.eigenvectors)
    true = np.linalg.norm(v @ np.asarray(a) - np.asarray(checked.eigenvalues)[:, None] * v, axis=1)
    np.testing.assert_allclose(checked.residuals, true, rtol=1e-6, atol=1e-14)
    assert int(checked.num_matvecs) == int(plain.num_matvecs) + 4


def test_budget_exhaustion_is_reported():
    a, _ = _matrix(6, jnp.float64, top=(1.0, 0.999, 0.998), bulk=(-1.0, 0.99))
    res = jax.jit(eigsh(3, tol=1e-12, krylov_dim=8, max_matvecs=20))(MatrixOperator(a), jax.random.key(3))
    assert not bool(res.converged) and int(res.num_matvecs) == 20


def test_repeated_eigenvalues_need_and_get_the_whole_space():
    # The synthetic landscapes have S eigenvalues of multiplicity k and a zero bulk.
    eigs = jnp.concatenate([jnp.full(4, 5.0), jnp.zeros(28)])
    a = hermitian_matrix_from_eigenvalues(eigs, jax.random.key(7))
    full = jax.jit(eigsh(5, krylov_dim=32))(MatrixOperator(a), jax.random.key(0))
    np.testing.assert_allclose(full.eigenvalues, [5, 5, 5, 5, 0], atol=1e-12)
    assert int(full.num_matvecs) == 32


def test_exact_breakdown_continues_with_a_fresh_direction():
    # A start vector inside a 2-dim invariant subspace: the third Lanczos vector is
    # exactly zero.  (matfree's tridiag_sym divides by that zero and returns
    # eigenvalues in the thousands for this matrix; see benchmarks/RESULTS.md.)
    a = jnp.diag(jnp.concatenate([jnp.full(4, 5.0), jnp.zeros(28)]))
    v0 = jnp.zeros(32).at[0].set(1.0).at[5].set(1.0)
    res = jax.jit(lambda k: eigsh(5, krylov_dim=32)(MatrixOperator(a), k, v0=v0))(jax.random.key(0))
    np.testing.assert_allclose(res.eigenvalues, [5, 5, 5, 5, 0], atol=1e-12)
    assert np.all(np.isfinite(res.eigenvectors))


def test_vmap_over_seeds_equals_a_loop():
    a, _ = _matrix(8, jnp.float64)
    solve = eigsh(4, tol=1e-9, krylov_dim=12)
    keys = jax.random.split(jax.random.key(4), 5)
    batched = jax.jit(jax.vmap(lambda k: solve(MatrixOperator(a), k)))(keys)
    single = jax.jit(lambda k: solve(MatrixOperator(a), k))
    for i in range(5):
        one = single(keys[i])
        np.testing.assert_allclose(batched.eigenvalues[i], one.eigenvalues, rtol=1e-12)
        np.testing.assert_allclose(np.abs(batched.eigenvectors[i] @ one.eigenvectors.T), np.eye(4), atol=1e-9)
        assert int(batched.num_matvecs[i]) == int(one.num_matvecs)


def test_vmap_over_operators_and_plain_pytree_matvec():
    mats = jnp.stack([_matrix(s, jnp.float64)[0] * (1 + s) for s in range(3)])
    solve = eigsh(2, tol=1e-10)
    res = jax.jit(jax.vmap(lambda m, k: solve(operator_matvec, k, MatrixOperator(m))))(
        mats, jax.random.split(jax.random.key(5), 3))
    for s in range(3):
        np.testing.assert_allclose(res.eigenvalues[s], np.asarray(TOP[:2]) * (1 + s), rtol=1e-9)
    # A plain matvec on a pytree vector space: `like` gives the space.
    a = mats[0]
    like = {"u": jnp.zeros(D - 20), "w": jnp.zeros(20)}

    def matvec(v, m):
        flat = m @ jnp.concatenate([v["u"], v["w"]])
        return {"u": flat[: D - 20], "w": flat[D - 20:]}

    tree = jax.jit(lambda k: eigsh(2, tol=1e-10, like=like)(matvec, k, a))(jax.random.key(6))
    np.testing.assert_allclose(tree.eigenvalues, TOP[:2], rtol=1e-9)


def test_lanczos_on_a_model_hessian_matches_eigh():
    model = MLP(4, 3, width=6, depth=2, key=jax.random.key(0))
    apply_fn, params = as_functional(model)
    x = jax.random.normal(jax.random.key(1), (16, 4))
    y = jax.random.randint(jax.random.key(2), (16,), 0, 3)

    def loss(p, batch):
        return cross_entropy(apply_fn(p, batch[0]), batch[1])

    @jax.jit
    def both(params):
        op = hessian_operator(loss, params, (x, y))
        return eigsh(6, tol=1e-11)(op.linearize(), jax.random.key(3)), jnp.linalg.eigvalsh(op.to_dense())

    res, exact = both(params)
    exact = np.sort(np.asarray(exact))[::-1][:7]
    separated = np.abs(np.diff(exact)) / np.abs(exact[:-1]) > 1e-3  # well separated from the next one
    assert separated[:3].all()
    np.testing.assert_allclose(np.asarray(res.eigenvalues)[separated[:6]], exact[:6][separated[:6]], rtol=1e-8)


def test_power_iteration_with_deflation():
    a, exact = _matrix(9, jnp.float64, top=(10.0, 7.0, 4.0), bulk=(0.0, 2.0))
    res = jax.jit(power_iteration(3, tol=1e-9))(MatrixOperator(a, psd=True), jax.random.key(0))
    np.testing.assert_allclose(res.eigenvalues, exact[:3], rtol=1e-9)
    assert bool(res.converged)
    lanczos = jax.jit(eigsh(3, tol=1e-9))(MatrixOperator(a), jax.random.key(0))
    assert int(lanczos.num_matvecs) < int(res.num_matvecs)  # why Lanczos is the default
    capped = jax.jit(power_iteration(2, tol=1e-14, max_iters=5))(MatrixOperator(a), jax.random.key(0))
    assert not bool(capped.converged) and int(capped.num_matvecs) == 10


def test_warm_started_tracking_follows_a_rotating_spectrum():
    d, ts = 80, jnp.linspace(0.0, 0.05, 6)
    eigs = jnp.concatenate([jnp.array([3.0, 2.9, 2.8]), jnp.linspace(0.0, 2.5, d - 3)])
    q0 = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (d, d)))[0]
    skew = jax.random.normal(jax.random.key(1), (d, d))
    skew = (skew - skew.T) / jnp.sqrt(d)
    mats = jax.vmap(lambda t: (lambda q: (q * eigs) @ q.T)(jax.scipy.linalg.expm(t * skew) @ q0))(ts)

    def run(warm):
        track = track_eigenspace(3, warm_start=warm, tol=1e-8, krylov_dim=12, like=jnp.zeros(d))
        return jax.jit(lambda k, m: track(lambda v, a: a @ v, k, m))(jax.random.key(2), mats)

    warm, cold = run(True), run(False)
    for res in (warm, cold):
        np.testing.assert_allclose(res.eigenvalues, np.tile([3.0, 2.9, 2.8], (6, 1)), rtol=1e-7)
        assert bool(np.all(res.converged))
    assert float(warm.overlap[0]) == 1.0 and np.all(np.asarray(warm.overlap[1:]) < 1.0)
    assert int(warm.num_matvecs[1:].sum()) < 0.8 * int(cold.num_matvecs[1:].sum())


@pytest.mark.parametrize(
    "factory,field",
    [
        (lambda: eigsh(0), "num_eigs"),
        (lambda: eigsh(2, which="middle"), "which"),
        (lambda: eigsh(2, tol=-1.0), "tol"),
        (lambda: eigsh(4, krylov_dim=3), "krylov_dim"),
        (lambda: power_iteration(1, max_iters=0), "max_iters"),
    ],
)
def test_bad_settings_name_the_field(factory, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        factory()


def test_bad_calls_name_the_field():
    op = MatrixOperator(jnp.eye(4))
    with pytest.raises(ValueError, match="^num_eigs:"):
        eigsh(5)(op, jax.random.key(0))
    with pytest.raises(ValueError, match="like is required"):
        eigsh(1)(lambda v: v, jax.random.key(0))
    with pytest.raises(ValueError, match="^v0:"):
        eigsh(1)(op, jax.random.key(0), v0=jnp.ones(3))

"""AIC diagnostics: configured values on quadratic-cubic landscapes, dense
ground truth on an MLP and a tiny transformer, flax = equinox, GGN/Fisher
operators, JSON, vmap over a grid, negative controls, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geomsim import align_coefficients, dense_aic, quadratic_cubic
from geomsim.curvature import dense_ggn, fisher_operator, ggn_operator
from geomsim.io import loads_strict
from geomsim.models import MLP, Transformer, TransformerConfig, as_functional, cross_entropy
from geomsim.theory import Subspace, aic_factory, dense_matrices
from geomsim.theory.aic import AICResult, aic, landscape_aic
from geomsim.theory.aic_dense import dense_model_aic

# Distinct S eigenvalues (spread 3) so a Krylov space below d resolves them; the
# degenerate default landscape is covered with krylov_dim = d.
CONFIGS = {
    "quartic": dict(sharpness=10.0, coupling=0.5),
    "overlap_mu": dict(sharpness=4.0, coupling=0.2, eps=0.03, mu=1e-3, sharpness_spread=3.0),
    "cubic": dict(sharpness=2.0, coupling=0.7, cubic_coupling=0.4, align_cubic=0.3, sharpness_spread=2.0),
}

KEY = jax.random.key(0)  # aic takes an explicit key (Lanczos start, trace probes)


@pytest.fixture(scope="module")
def landscape_results():
    out = {}
    for name, cfg in CONFIGS.items():
        land = quadratic_cubic(jax.random.key(1), dim=24, rank=3, **cfg)
        exhaustive = cfg.get("sharpness_spread", 1.0) == 1.0
        options = dict(krylov_dim=24, num_eigs=24) if exhaustive else dict(num_eigs=4)
        res = jax.jit(lambda land, o=options: landscape_aic(land, 3, key=KEY, trace_samples=12, **o))(land)
        out[name] = (cfg, land, res)
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_landscape_measurements_equal_the_configuration(name, landscape_results):
    cfg, land, res = landscape_results[name]
    spread = cfg.get("sharpness_spread", 1.0)
    np.testing.assert_allclose(res.sharpness, cfg["sharpness"], rtol=1e-10)
    np.testing.assert_allclose(res.eigenvalues[0], cfg["sharpness"] * spread, rtol=1e-10)
    np.testing.assert_allclose(res.mu, cfg.get("mu", 0.0), atol=1e-12)
    np.testing.assert_allclose(res.eps, cfg.get("eps", 0.0), atol=1e-12)
    np.testing.assert_allclose(res.coupling, cfg["coupling"], rtol=1e-10)
    np.testing.assert_allclose(res.grad_norm, 1.0, rtol=1e-12)
    assert int(res.rank) == 3 and bool(res.converged)
    dense = dense_aic(land, 3)
    for field in ("sharpness", "eps", "coupling", "grad_norm"):
        np.testing.assert_allclose(getattr(res, field), getattr(dense, field), rtol=1e-9, atol=1e-13)
    # Tail mass: (d - k) mu exactly (XTrace is exact on this small d).
    np.testing.assert_allclose(res.tail_mass, (24 - 3) * cfg.get("mu", 0.0), atol=1e-10)
    np.testing.assert_allclose(res.trace, jnp.trace(land.hess_align), rtol=1e-10)
    np.testing.assert_allclose(res.window_end, 1.0 / np.max(np.abs(np.linalg.eigvalsh(land.hess_task))), rtol=1e-3)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_landscape_taylor_coefficients_are_exact(name, landscape_results):
    cfg, land, res = landscape_results[name]
    exact = align_coefficients(land, 4)
    np.testing.assert_allclose(res.taylor[:4], exact[:4], rtol=1e-9, atol=1e-14)
    lead = cfg["sharpness"] * cfg["coupling"] ** 2 / 8
    if name == "quartic":  # eps = mu = 0, no cubic terms: the leading term is all of c4
        np.testing.assert_allclose(res.c4, exact[4], rtol=1e-10)
        np.testing.assert_allclose(res.c4_bound, lead, rtol=1e-10)
        np.testing.assert_allclose(res.t_fail, (res.threshold / lead) ** 0.25, rtol=1e-10)
        t = res.curve_time[-5]
        np.testing.assert_allclose(res.predict(t), lead * t**4, rtol=1e-10)
    assert float(res.c4) >= float(res.c4_bound) * (1 - 1e-12)  # c4 >= lambda gamma^2 / 8
    np.testing.assert_allclose(res.curve, res.predict(res.curve_time), rtol=1e-12)


def test_negative_control_and_update_overlap():
    land = quadratic_cubic(jax.random.key(2), dim=16, rank=2, sharpness=5.0, coupling=0.0)
    g = land.grad_task

    @jax.jit
    def run(update):
        return landscape_aic(land, 2, key=KEY, krylov_dim=16, num_eigs=16, update=update, trace_samples=0)

    res = run(-g)
    np.testing.assert_allclose(res.coupling, 0.0, atol=1e-12)
    np.testing.assert_allclose(res.c4, 0.0, atol=1e-12)
    assert np.isinf(float(res.t_fail))
    np.testing.assert_allclose(res.update_overlap, float(res.eps) ** 2, atol=1e-12)
    inside = run(jnp.array([1.0, -2.0]) @ land.basis)
    np.testing.assert_allclose(inside.update_overlap, 1.0, rtol=1e-12)
    assert np.isnan(float(res.tail_mass))


def test_a_given_subspace_gives_the_task_side_and_the_s_part_coefficients(landscape_results):
    """`subspace=` skips the spectrum: with the Lanczos S it reproduces every task-side
    field, and the S coordinates and S-part coefficients equal the dense ones."""
    cfg, land, res = landscape_results["overlap_mu"]
    given = jax.jit(lambda land, s: landscape_aic(land, 3, key=KEY, subspace=s))(
        land, Subspace(res.basis, res.eigenvalues[:3]))
    assert given.operator == "subspace" and int(given.rank) == 3 and given.eigenvalues.shape == (3,)
    for field in ("sharpness", "eps", "coupling", "coupling_fisher", "grad_norm", "align_grad_norm", "grad_coords",
                  "task_hg_coords", "taylor", "c4_bound", "c4_bound_fisher", "t_fail", "window_end"):
        np.testing.assert_allclose(getattr(given, field), getattr(res, field), rtol=1e-12, atol=1e-15, err_msg=field)
    assert all(np.all(np.isnan(getattr(given, f))) for f in ("mu", "gap_ratio", "tail_mass", "trace", "residuals"))
    hess_a, g, hess_f = dense_matrices(land)
    evals, evecs = np.linalg.eigh(np.asarray(hess_a))
    top, rows = evals[::-1][:3], evecs[:, ::-1][:, :3].T
    np.testing.assert_allclose(given.c2_s, 0.5 * np.sum(top * (rows @ g) ** 2), rtol=1e-10)
    np.testing.assert_allclose(given.c4_s, 0.125 * np.sum(top * (rows @ (hess_f @ g)) ** 2), rtol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(given.grad_coords), cfg["eps"], rtol=1e-10)  # ||P_S g||, ||g|| = 1
    np.testing.assert_allclose(given.c4_s, given.c4_bound_fisher, rtol=1e-12)  # F = A on S
    # Negative control: the next three eigenvectors are not S; eps and gamma there are not the configured ones.
    outside = landscape_aic(land, 3, key=KEY, subspace=Subspace(evecs[:, ::-1][:, 3:6].T, evals[::-1][3:6]))
    assert abs(float(outside.eps) - cfg["eps"]) > 0.1 * cfg["eps"]
    assert abs(float(outside.coupling) - cfg["coupling"]) > 0.1 * cfg["coupling"]
    # Given in ascending order, S is the same S: sharpness is still its smallest eigenvalue.
    flipped = landscape_aic(land, 3, key=KEY, subspace=Subspace(res.basis[::-1], res.eigenvalues[:3][::-1]))
    for field in ("sharpness", "c4_bound", "c4_s", "c2_s", "eps", "coupling"):
        np.testing.assert_allclose(getattr(flipped, field), getattr(given, field), rtol=1e-12, err_msg=field)
    with pytest.raises(ValueError, match=r"^subspace: basis must be \(k, d\) = \(3, 24\)"):
        landscape_aic(land, 3, key=KEY, subspace=Subspace(res.basis.T, res.eigenvalues[:3]))
    with pytest.raises(ValueError, match="^operator: a given subspace replaces"):
        landscape_aic(land, 3, key=KEY, subspace=Subspace(res.basis, res.eigenvalues[:3]), operator="fisher")


def test_vmap_over_a_landscape_grid():
    sharp = jnp.array([1.0, 3.0, 10.0, 30.0])
    coup = jnp.array([0.05, 0.1, 0.5, 1.0])

    @jax.jit
    @jax.vmap
    def grid(s, c):
        land = quadratic_cubic(jax.random.key(0), dim=12, rank=2, sharpness=s, coupling=c)
        return landscape_aic(land, 2, key=KEY, krylov_dim=12, num_eigs=12, trace_samples=0, window=False)

    res = grid(sharp, coup)
    np.testing.assert_allclose(res.sharpness, sharp, rtol=1e-10)
    np.testing.assert_allclose(res.coupling, coup, rtol=1e-10)
    np.testing.assert_allclose(res.c4, sharp * coup**2 / 8, rtol=1e-10)
    np.testing.assert_array_equal(res.rank, 2)


# --- models: dense ground truth ----------------------------------------------------------------


def _data(key, n, in_size, classes):
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, (n, in_size)), jax.random.randint(k2, (n,), 0, classes)


@pytest.fixture(scope="module")
def mlp_problem():
    apply_fn, params = as_functional(MLP(3, 3, width=6, depth=2, key=jax.random.key(0)))
    align = _data(jax.random.key(1), 12, 3, 3)
    task = _data(jax.random.key(2), 12, 3, 3)

    def align_loss(p, batch):
        return cross_entropy(apply_fn(p, batch["align"][0]), batch["align"][1])

    def task_loss(p, batch):
        return cross_entropy(apply_fn(p, batch["task"][0]), batch["task"][1])

    return apply_fn, params, {"align": align, "task": task}, align_loss, task_loss


def test_model_aic_matches_dense_computation(mlp_problem):
    apply_fn, params, batch, align_loss, task_loss = mlp_problem
    k = 3
    res = eqx.filter_jit(lambda p: aic(align_loss, task_loss, p, batch, k=k, key=KEY, tol=1e-11, trace_samples=0))(params)
    ref = eqx.filter_jit(lambda p: dense_model_aic(align_loss, task_loss, p, batch, k=k))(params)
    np.testing.assert_allclose(res.eigenvalues, ref.eigenvalues[: res.eigenvalues.shape[0]], rtol=1e-8)
    for field in ("sharpness", "mu", "eps", "coupling", "coupling_fisher", "grad_norm"):
        np.testing.assert_allclose(getattr(res, field), getattr(ref, field), rtol=1e-7, err_msg=field)
    np.testing.assert_allclose(res.taylor, ref.taylor, rtol=1e-9, atol=1e-14)
    assert abs(float(res.taylor[1])) > 1e-6 and abs(float(res.taylor[3])) > 1e-8  # off-minimum: all terms live
    np.testing.assert_allclose(np.abs(res.basis @ ref.basis.T), np.eye(k), atol=1e-6)


def test_fisher_and_ggn_operators_define_s(mlp_problem):
    apply_fn, params, batch, align_loss, task_loss = mlp_problem
    align_data = batch["align"]

    @eqx.filter_jit
    def run(p):
        ggn = ggn_operator(apply_fn, cross_entropy, p, align_data)
        fisher = fisher_operator(apply_fn, p, align_data)
        common = dict(k=2, key=KEY, tol=1e-11, window=False, laws=False)
        by_ggn = aic(align_loss, task_loss, p, batch, operator=ggn, trace_samples=8, **common)
        # S from the Hessian, coupling weighted by the Fisher (= the GGN for a softmax).
        mixed = aic(align_loss, task_loss, p, batch, fisher=fisher, trace_samples=0, **common)
        return by_ggn, mixed, dense_ggn(apply_fn, cross_entropy, p, align_data)

    by_ggn, mixed, g_dense = run(params)
    ref = eqx.filter_jit(lambda p, m: dense_model_aic(align_loss, task_loss, p, batch, k=2, operator_matrix=m,
                                                      third_order=False))(params, g_dense)
    assert by_ggn.operator == "GGNOperator" and mixed.operator == "hessian"
    for field in ("sharpness", "mu", "eps", "coupling", "coupling_fisher"):
        np.testing.assert_allclose(getattr(by_ggn, field), getattr(ref, field), rtol=1e-7, err_msg=field)
    # PSD operator: XNysTrace tail mass, close to the exact tail sum.
    tail = float(np.sum(np.linalg.eigvalsh(np.asarray(g_dense))[:-2]))
    assert abs(float(by_ggn.tail_mass) - tail) < 6 * float(by_ggn.tail_mass_stderr) + 1e-6 * tail
    # Hessian-defined S with a Fisher-weighted coupling: (P_S H_F g)^T F (P_S H_F g).
    hess_ref = eqx.filter_jit(lambda p: dense_model_aic(align_loss, task_loss, p, batch, k=2,
                                                        third_order=False))(params)
    s_hg = hess_ref.basis.T @ (hess_ref.basis @ jax.jit(_task_hg, static_argnums=0)(task_loss, params, batch))
    np.testing.assert_allclose(mixed.coupling_fisher, np.sqrt(s_hg @ np.asarray(g_dense) @ s_hg), rtol=1e-7)


def _task_hg(task_loss, params, batch):
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(params)
    g = jax.grad(lambda x: task_loss(unravel(x), batch))(flat)
    return jax.hessian(lambda x: task_loss(unravel(x), batch))(flat) @ g


def test_flax_and_equinox_mlp_give_the_same_aic(mlp_problem):
    pytest.importorskip("flax")
    from geomsim.models.flax_twins import mlp_to_flax

    model = MLP(3, 3, width=6, depth=2, key=jax.random.key(0))
    _, params, batch, align_loss, task_loss = mlp_problem
    twin, flax_params = mlp_to_flax(model)
    flax_fn, flax_p = as_functional(twin, {"params": flax_params})

    def flax_align(p, b):
        return cross_entropy(flax_fn(p, b["align"][0]), b["align"][1])

    def flax_task(p, b):
        return cross_entropy(flax_fn(p, b["task"][0]), b["task"][1])

    # window=False: the window is a loose (tol 1e-3) solve whose random start depends on the parameter layout.
    run = eqx.filter_jit(lambda a, t, p: aic(a, t, p, batch, k=3, key=KEY, tol=1e-11, trace_samples=0, window=False))
    eqx_res, flax_res = run(align_loss, task_loss, params), run(flax_align, flax_task, flax_p)
    for field in ("eigenvalues", "sharpness", "mu", "eps", "coupling", "coupling_fisher", "taylor", "t_fail",
                  "t_threshold", "curve"):
        np.testing.assert_allclose(getattr(flax_res, field), getattr(eqx_res, field), rtol=1e-8, atol=1e-13,
                                   err_msg=field)


def test_transformer_aic_matches_dense_and_flax_twin_agrees():
    pytest.importorskip("flax")
    from geomsim.models.flax_twins import transformer_to_flax

    cfg = TransformerConfig(vocab_size=5, seq_len=4, width=4, depth=1, num_heads=2, mlp_ratio=1)
    model = Transformer(cfg, key=jax.random.key(3))
    tokens = jax.random.randint(jax.random.key(4), (2, 3, 5), 0, 5)
    batch = {"align": (tokens[0, :, :-1], tokens[0, :, 1:]), "task": (tokens[1, :, :-1], tokens[1, :, 1:])}
    twin, flax_params = transformer_to_flax(model)

    def losses(apply_fn):
        def align_loss(p, b):
            return cross_entropy(apply_fn(p, b["align"][0]), b["align"][1])

        def task_loss(p, b):
            return cross_entropy(apply_fn(p, b["task"][0]), b["task"][1])

        return align_loss, task_loss

    eqx_fn, eqx_params = as_functional(model)
    flax_fn, flax_p = as_functional(twin, {"params": flax_params})
    # Laws without c3 (third derivatives of a transformer are slow to compile) for
    # the equinox model only; the twins' full results are compared on the MLP above.
    run = eqx.filter_jit(lambda a, t, p, laws: aic(a, t, p, batch, k=2, key=KEY, tol=1e-11, trace_samples=0, window=False,
                                                   laws=laws, third_order=False))
    eqx_res = run(*losses(eqx_fn), eqx_params, True)
    flax_res = run(*losses(flax_fn), flax_p, False)
    assert np.isnan(float(eqx_res.taylor[3])) and np.isnan(float(flax_res.c4))
    for field in ("eigenvalues", "sharpness", "mu", "eps", "coupling", "coupling_fisher"):
        np.testing.assert_allclose(getattr(flax_res, field), getattr(eqx_res, field), rtol=1e-8, atol=1e-13,
                                   err_msg=field)
    align_loss, task_loss = losses(eqx_fn)
    ref = eqx.filter_jit(lambda p: dense_model_aic(align_loss, task_loss, p, batch, k=2, third_order=False))(
        eqx_params)
    for field in ("sharpness", "mu", "eps", "coupling", "coupling_fisher"):
        np.testing.assert_allclose(getattr(eqx_res, field), getattr(ref, field), rtol=1e-7, err_msg=field)
    for j in (1, 2, 4):  # c3 needs the dense 3-tensor: checked on the MLP
        np.testing.assert_allclose(eqx_res.taylor[j], ref.taylor[j], rtol=1e-8, atol=1e-14)


def test_result_round_trips_through_strict_json(landscape_results):
    _, _, res = landscape_results["overlap_mu"]
    text = res.to_json(include_basis=True)
    data = loads_strict(text)  # strict JSON: non-finite numbers are null, with their kind in "nonfinite"
    assert data["k"] == 3 and data["operator"] == "hessian"
    back = AICResult.from_dict(data)
    for field in ("eigenvalues", "sharpness", "eps", "coupling", "taylor", "curve", "basis", "t_threshold"):
        np.testing.assert_allclose(getattr(back, field), getattr(res, field), rtol=1e-15)
    assert back.k == res.k
    controls = jax.jit(lambda land: landscape_aic(land, 2, key=KEY, krylov_dim=8, num_eigs=8, trace_samples=0,
                                                  window=False))(
        quadratic_cubic(jax.random.key(2), dim=8, rank=2, coupling=0.0))
    dumped = loads_strict(controls.to_json())
    assert dumped["t_fail"] is None and dumped["tail_mass"] is None
    assert dumped["nonfinite"]["t_fail"] == "inf" and dumped["nonfinite"]["tail_mass"] == "nan"
    assert "basis" not in dumped
    assert np.isinf(float(AICResult.from_dict(dumped).t_fail))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(k=0), "k"),
        (dict(k=8), "k"),
        (dict(k=2, threshold=0.0), "threshold"),
        (dict(k=2, operator="laplacian"), "operator"),
        (dict(k=2, num_eigs=2), "num_eigs"),
        (dict(k=2, trace_samples=-1), "trace_samples"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    land = quadratic_cubic(jax.random.key(0), dim=8, rank=2)
    with pytest.raises(ValueError, match=f"^{field}:"):
        landscape_aic(land, key=KEY, **kwargs)


def test_aic_needs_an_explicit_key():
    land = quadratic_cubic(jax.random.key(0), dim=8, rank=2)
    with pytest.raises(ValueError, match="^key: aic needs an explicit PRNG key"):
        landscape_aic(land, 2)


# --- the factory ---------------------------------------------------------------------------------


def _landscape_losses(land):
    from geomsim.landscapes.base import flatten_displacement

    zero, unravel = flatten_displacement(land)
    return (lambda x: land.align_increase(unravel(x))), (lambda x: land.displaced_task_loss(unravel(x))), zero


def _fields(res):
    return {f: np.asarray(getattr(res, f)) for f in res.__dataclass_fields__ if f not in ("k", "operator")}


def test_factory_measure_equals_aic():
    land = quadratic_cubic(jax.random.key(1), dim=12, rank=2, **CONFIGS["cubic"])
    align, task, zero = _landscape_losses(land)
    settings = dict(num_eigs=4, trace_samples=5, threshold=0.05, num_curve=16)
    measure = aic_factory(2, **settings)
    by_factory = eqx.filter_jit(measure)(align, task, zero, key=KEY, update=-land.grad_task)
    by_aic = eqx.filter_jit(lambda p: aic(align, task, p, k=2, key=KEY, update=-land.grad_task, **settings))
    by_aic = by_aic(zero)
    assert (by_factory.k, by_factory.operator) == (by_aic.k, by_aic.operator) == (2, "hessian")
    for field, value in _fields(by_aic).items():
        np.testing.assert_array_equal(_fields(by_factory)[field], value, err_msg=field)
    np.testing.assert_allclose(by_factory.taylor[:4], align_coefficients(land, 4)[:4], rtol=1e-9, atol=1e-14)


def test_factory_jits_and_vmaps_over_keys():
    land = quadratic_cubic(jax.random.key(2), dim=24, rank=3, **CONFIGS["overlap_mu"])
    align, task, zero = _landscape_losses(land)
    measure = aic_factory(3, num_eigs=4, trace_samples=4, num_curve=8)
    keys = jax.random.split(jax.random.key(5), 3)
    batched = jax.jit(jax.vmap(lambda key: measure(align, task, zero, key=key)))(keys)
    one = jax.jit(lambda key: measure(align, task, zero, key=key))
    assert batched.eigenvalues.shape == (3, 4) and batched.basis.shape == (3, 3, 24)
    for i in range(3):
        single = _fields(one(keys[i]))
        for field, value in _fields(batched).items():
            if field in ("grad_coords", "task_hg_coords"):  # S coordinates: up to the basis' row signs
                np.testing.assert_allclose(np.abs(value[i]), np.abs(single[field]), rtol=1e-9, atol=1e-12,
                                           err_msg=field)
            elif np.issubdtype(value.dtype, np.floating) and field != "basis":  # basis: up to row signs
                np.testing.assert_allclose(value[i], single[field], rtol=1e-9, atol=1e-12, err_msg=field)
            elif field != "basis":
                np.testing.assert_array_equal(value[i], single[field], err_msg=field)
        np.testing.assert_allclose(np.abs(batched.basis[i] @ single["basis"].T), np.eye(3), atol=1e-8)
    # The key matters (the tail-mass probes differ) and the measurement is right for each.
    assert len(set(np.asarray(batched.tail_mass_stderr).tolist())) == 3
    np.testing.assert_allclose(batched.sharpness, CONFIGS["overlap_mu"]["sharpness"], rtol=1e-10)
    np.testing.assert_allclose(batched.eps, CONFIGS["overlap_mu"]["eps"], atol=1e-12)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(k=0), "k"),
        (dict(k=2, threshold=-1.0), "threshold"),
        (dict(k=2, trace_samples=-1), "trace_samples"),
        (dict(k=2, num_curve=1), "num_curve"),
        (dict(k=2, num_eigs=2), "num_eigs"),
    ],
)
def test_factory_rejects_a_bad_setting_in_one_line(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:") as err:
        aic_factory(**kwargs)
    assert "\n" not in str(err.value)


def test_factory_measure_checks_its_inputs():
    land = quadratic_cubic(jax.random.key(0), dim=8, rank=2)
    align, task, zero = _landscape_losses(land)
    with pytest.raises(ValueError, match="^key: aic needs an explicit PRNG key"):
        aic_factory(2)(align, task, zero, key=None)
    with pytest.raises(ValueError, match=r"^k: must be < d = 8 \(got 8\)"):
        aic_factory(8)(align, task, zero, key=KEY)
    with pytest.raises(ValueError, match=r"^num_eigs: must be in \[k \+ 1, d\] = \[3, 8\] \(got 9\)"):
        aic_factory(2, num_eigs=9)(align, task, zero, key=KEY)

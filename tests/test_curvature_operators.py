"""Every curvature operator against its dense matrix (float64), on an MLP, a
tiny transformer and a quadratic-cubic landscape; batching, pytrees, finite
differences, linearisation, vmap over models, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from geomsim import quadratic_cubic
from geomsim.curvature import (
    Stacked,
    as_batches,
    empirical_fisher_operator,
    fisher_operator,
    ggn_operator,
    hessian_operator,
    mc_fisher_operator,
)
from geomsim.landscapes import flatten_displacement
from geomsim.models import MLP, Transformer, TransformerConfig, as_functional, cross_entropy, squared_error


def _mlp_problem():
    model = MLP(3, 4, width=5, depth=2, key=jax.random.key(0))
    apply_fn, params = as_functional(model)
    keys = jax.random.split(jax.random.key(1), 4)
    batches = [
        (jax.random.normal(keys[0], (6, 3)), jax.random.randint(keys[1], (6,), 0, 4)),
        (jax.random.normal(keys[2], (6, 3)), jax.random.randint(keys[3], (6,), 0, 4)),
    ]
    return apply_fn, params, batches


def _transformer_problem():
    cfg = TransformerConfig(vocab_size=5, seq_len=4, width=4, depth=1, num_heads=2, mlp_ratio=1)
    apply_fn, params = as_functional(Transformer(cfg, key=jax.random.key(2)))
    tokens = jax.random.randint(jax.random.key(3), (3, 5), 0, 5)
    batches = [(tokens[:, :-1], tokens[:, 1:])]  # one batch: averaging is tested on the MLP
    return apply_fn, params, batches


from geomsim.curvature import dense as _dense  # noqa: E402

# Jitted ground truth (callables static): un-jitted vmaps dispatch op by op.
dense_hessian = eqx.filter_jit(_dense.dense_hessian)
dense_fisher = eqx.filter_jit(_dense.dense_fisher)
dense_empirical_fisher = eqx.filter_jit(_dense.dense_empirical_fisher)
to_dense = eqx.filter_jit(lambda op: op.to_dense())

PROBLEMS = {"mlp": _mlp_problem, "transformer": _transformer_problem}


@pytest.fixture(scope="module", params=sorted(PROBLEMS))
def problem(request):
    """A model, its data, every operator, and every matrix (matrix-free and dense).

    All matrices come from one jitted program per model (compiling dominates
    the cost of these tiny problems, so each program is compiled once).
    """
    apply_fn, params, batches = PROBLEMS[request.param]()

    def loss(p, batch):
        return cross_entropy(apply_fn(p, batch[0]), batch[1])

    ops = {
        "hessian": hessian_operator(loss, params, batches),
        "ggn": ggn_operator(apply_fn, cross_entropy, params, batches),
        "fisher": fisher_operator(apply_fn, params, batches),
        "empirical": empirical_fisher_operator(apply_fn, params, batches),
        "mc": mc_fisher_operator(apply_fn, params, batches, key=jax.random.key(7), num_samples=3),
    }

    @eqx.filter_jit
    def matrices(ops):
        free = {name: op.to_dense() for name, op in ops.items()}
        dense = {
            "hessian": _dense.dense_hessian(loss, params, batches),
            "ggn": _dense.dense_ggn(apply_fn, cross_entropy, params, batches),
            "fisher": _dense.dense_fisher(apply_fn, params, batches),
            "empirical": _dense.dense_empirical_fisher(apply_fn, params, batches),
            "mc": _dense.dense_operator_fisher(ops["mc"]),
        }
        return free, dense

    free, dense = matrices(ops)
    return dict(apply_fn=apply_fn, params=params, batches=batches, loss=loss, ops=ops, free=free, dense=dense)


def _close(a, b, rtol=1e-10):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.max(np.abs(b)), 1e-300)
    np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=rtol)


def test_hessian_matches_jax_hessian(problem):
    free, dense = problem["free"]["hessian"], problem["dense"]["hessian"]
    _close(free, dense)
    _close(dense, dense.T, 1e-12)
    op = problem["ops"]["hessian"]
    assert not op.psd and op.symmetric
    assert np.min(np.linalg.eigvalsh(dense)) < 0  # an indefinite Hessian: the tag is honest


def test_ggn_and_fishers_match_explicit_matrices(problem):
    free, dense = problem["free"], problem["dense"]
    for name in ("ggn", "fisher", "empirical", "mc"):
        _close(free[name], dense[name])
        assert problem["ops"][name].psd
        assert np.min(np.linalg.eigvalsh(free[name])) > -1e-12 * np.max(np.abs(dense[name]))
    # For a softmax likelihood the true Fisher is the GGN of the cross-entropy.
    _close(free["fisher"], dense["ggn"])
    # The empirical Fisher is a different matrix (observed, not model, targets).
    assert np.max(np.abs(free["empirical"] - dense["ggn"])) > 1e-3 * np.max(np.abs(dense["ggn"]))


def test_gaussian_likelihood_fisher_is_the_squared_error_ggn():
    apply_fn, params, _ = _mlp_problem()
    x = jax.random.normal(jax.random.key(4), (7, 3))
    y = jax.random.normal(jax.random.key(5), (7, 4))
    fisher = to_dense(fisher_operator(apply_fn, params, (x, y), likelihood="gaussian"))
    _close(fisher, to_dense(ggn_operator(apply_fn, squared_error, params, (x, y))))
    _close(fisher, dense_fisher(apply_fn, params, (x, y), likelihood="gaussian"))
    emp = to_dense(empirical_fisher_operator(apply_fn, params, (x, y), likelihood="gaussian"))
    _close(emp, dense_empirical_fisher(apply_fn, params, (x, y), likelihood="gaussian"))


def test_monte_carlo_fisher_converges_to_the_true_fisher():
    apply_fn, params, batches = _mlp_problem()
    true = to_dense(fisher_operator(apply_fn, params, batches))
    errors = []
    for num in (1, 400):
        mc = mc_fisher_operator(apply_fn, params, batches, key=jax.random.key(11), num_samples=num)
        errors.append(np.linalg.norm(to_dense(mc) - true) / np.linalg.norm(true))
    # Relative error ~ 1/sqrt(num samples): 20x more precise with 400 draws (allow a factor 2).
    assert errors[1] < errors[0] / 10
    assert errors[1] < 0.15


def test_landscape_hessians_are_the_configured_matrices():
    land = quadratic_cubic(jax.random.key(0), dim=10, rank=2, sharpness=7.0, coupling=0.3, mu=1e-3,
                           cubic_coupling=0.4, align_cubic=0.2)
    zero, unravel = flatten_displacement(land)

    @jax.jit
    def matrices(land, x):
        h_a = hessian_operator(lambda y: land.align_increase(unravel(y)), zero).to_dense()
        h_f = hessian_operator(lambda y: land.displaced_task_loss(unravel(y)), zero).to_dense()
        away = hessian_operator(lambda y: land.align_increase(unravel(y)), x).to_dense()
        return h_a, h_f, away, jax.hessian(land.align_increase)(x)

    x = 0.1 * jnp.ones(10)
    h_a, h_f, away, reference = matrices(land, x)
    _close(h_a, land.hess_align, 1e-13)
    _close(h_f, land.hess_task, 1e-13)
    # Away from theta0 the cubic terms add curvature: the operator sees it.
    _close(away, reference, 1e-13)
    assert np.max(np.abs(away - land.hess_align)) > 1e-3


def test_pytree_and_flat_products_agree(problem):
    op = problem["ops"]["hessian"]
    flat, unravel = ravel_pytree(problem["params"])
    v = jax.random.normal(jax.random.key(8), flat.shape)
    tree_out, flat_out = eqx.filter_jit(lambda op, v: (op.mv(op.unravel(v)), op.mv_flat(v)))(op, v)
    assert jax.tree.structure(tree_out) == jax.tree.structure(problem["params"])
    np.testing.assert_allclose(ravel_pytree(tree_out)[0], flat_out, rtol=1e-13, atol=1e-15)
    _close(flat_out, problem["dense"]["hessian"] @ v)
    np.testing.assert_allclose(op.ravel(op.unravel(v)), v)


def test_hvp_matches_central_finite_differences(problem):
    loss, batches = problem["loss"], problem["batches"]
    flat, unravel = ravel_pytree(problem["params"])
    v = jax.random.normal(jax.random.key(9), flat.shape)
    v = v / jnp.linalg.norm(v)
    grad_at = jax.jit(lambda x: jnp.mean(jnp.stack([ravel_pytree(jax.grad(loss)(unravel(x), b))[0]
                                                    for b in batches]), axis=0))
    h = 1e-4
    fd = (grad_at(flat + h * v) - grad_at(flat - h * v)) / (2 * h)
    hv = problem["free"]["hessian"] @ v
    # Central differences are O(h^2): ~1e-8 relative here; the HVP itself is exact.
    assert np.linalg.norm(fd - hv) / np.linalg.norm(hv) < 1e-6
    assert np.linalg.norm(fd - hv) / np.linalg.norm(hv) > 1e-14  # genuinely two computations


def test_linearized_operators_are_equal(problem):
    if len(problem["batches"]) == 1:
        pytest.skip("linearisation is model-agnostic; checked on the MLP (two batches) to save compiling")
    flat, _ = ravel_pytree(problem["params"])
    v = jax.random.normal(jax.random.key(10), flat.shape)
    for name in ("hessian", "mc"):
        op = problem["ops"][name]
        assert op.linearize().psd == op.psd
        out = eqx.filter_jit(lambda op, v: op.linearize().mv_flat(v))(op, v)
        _close(out, problem["free"][name] @ v, 1e-11)


def test_batch_forms_give_the_mean_over_all_examples():
    apply_fn, params, batches = _mlp_problem()

    def loss(p, batch):
        return cross_entropy(apply_fn(p, batch[0]), batch[1])

    (x1, y1), (x2, y2) = batches
    x_all, y_all = jnp.concatenate([x1, x2[:3]]), jnp.concatenate([y1, y2[:3]])
    reference = dense_hessian(loss, params, (x_all, y_all))  # one batch of 9 examples
    ragged = [(x1, y1), (x2[:3], y2[:3])]  # 6 + 3 examples: weights 2/3, 1/3 by count
    _close(to_dense(hessian_operator(loss, params, ragged)), reference, 1e-12)
    _close(to_dense(hessian_operator(loss, params, iter(ragged))), reference, 1e-12)
    assert not as_batches(ragged).stacked

    equal = dense_hessian(loss, params, (jnp.concatenate([x1, x2]), jnp.concatenate([y1, y2])))
    stacked = Stacked((jnp.stack([x1, x2]), jnp.stack([y1, y2])))
    assert as_batches(batches).stacked and as_batches(stacked).count == 2
    for form in (batches, stacked, (b for b in batches)):
        _close(to_dense(hessian_operator(loss, params, form)), equal, 1e-12)
    only_first = to_dense(hessian_operator(loss, params, batches, weights=[1.0, 0.0]))
    _close(only_first, dense_hessian(loss, params, batches[0]), 1e-12)


def test_operators_vmap_over_models():
    apply_fn, params, batches = _mlp_problem()

    def loss(p, batch):
        return cross_entropy(apply_fn(p, batch[0]), batch[1])

    models = [as_functional(MLP(3, 4, width=5, depth=2, key=jax.random.key(s)))[1] for s in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *models)
    v = jax.random.normal(jax.random.key(12), ravel_pytree(params)[0].shape)
    batched = jax.jit(jax.vmap(lambda p: hessian_operator(loss, p, batches).mv_flat(v)))(stacked)
    for i, p in enumerate(models):
        np.testing.assert_allclose(batched[i], hessian_operator(loss, p, batches).mv_flat(v), rtol=1e-11,
                                   atol=1e-14)


def test_bad_input_names_the_field():
    apply_fn, params, batches = _mlp_problem()
    with pytest.raises(ValueError, match="^batches:"):
        ggn_operator(apply_fn, cross_entropy, params, None)
    with pytest.raises(ValueError, match="^batches:"):
        hessian_operator(lambda _p, _b: 0.0, params, [])
    with pytest.raises(ValueError, match="^num_samples:"):
        mc_fisher_operator(apply_fn, params, batches, key=jax.random.key(0), num_samples=0)
    with pytest.raises(ValueError, match="^likelihood:"):
        fisher_operator(apply_fn, params, batches, likelihood="poisson")
    with pytest.raises(ValueError, match="^weights:"):
        hessian_operator(lambda _p, _b: 0.0, params, batches, weights=[1.0])
    with pytest.raises(ValueError, match="^weights:"):
        hessian_operator(lambda _p, _b: 0.0, params, batches, weights=[-1.0, 2.0])
    from geomsim.curvature import Gaussian

    with pytest.raises(ValueError, match="^sigma:"):
        Gaussian(sigma=0.0)

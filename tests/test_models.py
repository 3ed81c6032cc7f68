"""Reference models: shapes, causality, validation, and exact flax twins."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geomsim.models import (
    MLP,
    Transformer,
    TransformerConfig,
    as_functional,
    cross_entropy,
    next_token_batch,
    num_parameters,
    token_nll,
)

CFG = TransformerConfig(vocab_size=11, seq_len=7, width=12, depth=2, num_heads=3, mlp_ratio=2)


class _Jitted:
    """A model whose calls are compiled (eager transformer calls dispatch op by op)."""

    def __init__(self, model):
        self.model = model
        self._call = eqx.filter_jit(lambda m, x: m(x))

    def __call__(self, tokens):
        return self._call(self.model, tokens)

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.fixture(scope="module")
def model():
    return _Jitted(Transformer(CFG, key=jax.random.key(0)))


def test_transformer_shapes_and_param_count(model):
    tokens = jax.random.randint(jax.random.key(1), (4, 7), 0, 11)
    assert model(tokens).shape == (4, 7, 11)
    assert model(tokens[0]).shape == (7, 11)
    assert model(tokens[:, :3]).shape == (4, 3, 11)  # shorter sequences use the first positions
    w, v, t, h = 12, 11, 7, 24
    block = 2 * (2 * w) + (3 * w * w + 3 * w) + (w * w + w) + (w * h + h) + (h * w + w)
    assert num_parameters(model.model) == v * w + t * w + 2 * block + 2 * w + (w * v + v)
    tied = Transformer(TransformerConfig(**{**CFG.__dict__, "tie_embeddings": True}), key=jax.random.key(0))
    assert num_parameters(tied) == num_parameters(model.model) - (w * v + v)


def test_transformer_is_causal(model):
    tokens = jax.random.randint(jax.random.key(2), (7,), 0, 11)
    changed = tokens.at[4:].set((tokens[4:] + 1) % 11)
    a, b = model(tokens), model(changed)
    np.testing.assert_allclose(a[:4], b[:4], rtol=1e-12, atol=1e-12)
    assert not np.allclose(a[4:], b[4:])


def test_batch_axes_are_independent(model):
    tokens = jax.random.randint(jax.random.key(3), (3, 7), 0, 11)
    batched = model(tokens)
    for i in range(3):
        np.testing.assert_allclose(batched[i], model(tokens[i]), rtol=1e-12, atol=1e-12)


def test_losses_and_next_token_batch():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 4))
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 4)
    manual = -jax.nn.log_softmax(logits)[jnp.arange(2)[:, None], jnp.arange(5)[None], targets]
    np.testing.assert_allclose(token_nll(logits, targets), manual, rtol=1e-12)
    np.testing.assert_allclose(cross_entropy(logits, targets), manual.mean(), rtol=1e-12)
    x, y = next_token_batch(jnp.arange(10).reshape(2, 5))
    assert x.shape == y.shape == (2, 4) and int(y[0, 0]) == 1


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"width": 10, "num_heads": 3}, "num_heads"),
        ({"vocab_size": 1}, "vocab_size"),
        ({"depth": -1}, "depth"),
        ({"seq_len": 0}, "seq_len"),
    ],
)
def test_bad_transformer_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        TransformerConfig(**kwargs)


def test_too_long_sequence_is_rejected(model):
    with pytest.raises(ValueError, match="^tokens:"):
        model(jnp.zeros((8,), jnp.int32))


def test_mlp_and_its_validation():
    mlp = MLP(3, 2, width=5, depth=2, key=jax.random.key(0))
    assert mlp(jnp.ones((4, 3))).shape == (4, 2)
    with pytest.raises(ValueError, match="^activation:"):
        MLP(3, 2, activation="swish", key=jax.random.key(0))


def test_as_functional_equinox_roundtrip(model):
    apply_fn, params = as_functional(model.model)
    tokens = jax.random.randint(jax.random.key(4), (2, 7), 0, 11)
    np.testing.assert_allclose(apply_fn(params, tokens), model(tokens), rtol=1e-12, atol=1e-14)
    leaves = jax.tree.leaves(params)
    assert all(eqx.is_inexact_array(x) for x in leaves)
    with pytest.raises(ValueError, match="^model:"):
        as_functional(object())


def test_flax_twins_compute_the_same_function(model):
    pytest.importorskip("flax")
    from geomsim.models.flax_twins import flax_param_count, mlp_to_flax, transformer_to_flax

    twin, fparams = transformer_to_flax(model.model)
    apply_flax, p_flax = as_functional(twin, {"params": fparams})
    tokens = jax.random.randint(jax.random.key(5), (3, 7), 0, 11)
    np.testing.assert_allclose(jax.jit(apply_flax)(p_flax, tokens), model(tokens), rtol=1e-12, atol=1e-13)
    assert flax_param_count(fparams) == num_parameters(model.model)
    # A freshly initialised twin has the same parameter shapes as the converted one.
    init = twin.init(jax.random.key(0), tokens)["params"]
    assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, fparams)

    mlp = MLP(3, 2, width=4, depth=2, key=jax.random.key(1))
    ftwin, mparams = mlp_to_flax(mlp)
    x = jax.random.normal(jax.random.key(2), (5, 3))
    np.testing.assert_allclose(as_functional(ftwin, {"params": mparams})[0](mparams, x), mlp(x), rtol=1e-12)


def test_flax_nnx_model_goes_through_as_functional():
    nnx = pytest.importorskip("flax.nnx")
    layer = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    apply_fn, params = as_functional(layer)
    x = jnp.ones((4, 3))
    np.testing.assert_allclose(apply_fn(params, x), layer(x), rtol=1e-12)
    grads = jax.grad(lambda p: jnp.sum(apply_fn(p, x) ** 2))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)

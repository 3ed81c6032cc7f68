"""LoRA adapters start at the base model and reach only rank-r updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geomsim.models import Transformer, TransformerConfig, as_functional
from geomsim.models.lora import lora_init, lora_merge


@pytest.fixture
def model():
    cfg = TransformerConfig(vocab_size=20, seq_len=8, width=16, depth=2, num_heads=2)
    return as_functional(Transformer(cfg, key=jax.random.key(0)))


def test_starts_at_base_and_updates_are_low_rank(model):
    apply, params = model
    adapter = lora_init(params, 2, jax.random.key(1))
    merged = lora_merge(params, adapter)
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(merged), strict=True))
    tokens = jnp.zeros((1, 8), jnp.int32)

    def loss(a):
        return jnp.sum(apply(lora_merge(params, a), tokens) ** 2)

    grads = jax.grad(loss)(adapter)
    moved = jax.tree.map(lambda a, g: a - 0.1 * g, adapter, grads)
    diffs = [b - a for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(lora_merge(params, moved)), strict=True) if a.ndim == 2]
    ranks = [int(np.linalg.matrix_rank(np.asarray(d), tol=1e-6)) for d in diffs if float(jnp.abs(d).max()) > 0]
    assert ranks and max(ranks) <= 2


def test_errors(model):
    _, params = model
    with pytest.raises(ValueError, match="rank"):
        lora_init(params, 0, jax.random.key(0))
    with pytest.raises(ValueError, match="selected no weight"):
        lora_init(params, 1, jax.random.key(0), targets=lambda _path, _leaf: False)
    with pytest.raises(ValueError, match="adapter"):
        lora_merge(params, ())


def test_a_stacked_decoder_gets_one_rank_r_update_per_layer():
    """DecoderLM stacks its layers `(L, rows, cols)`: each layer's matrix gets its own factors
    (the batched merge equals the per-layer `W + U V`), and the stacked norms `(L, D)` none."""
    from geomsim.models.hf import DecoderLM, parse_config
    from geomsim.models.hf.tiny import llama_config
    from geomsim.models.lora import stacked_targets

    cfg = parse_config(llama_config(11, 8, 3, 2, 1, 24, max_positions=8))
    params = as_functional(DecoderLM(cfg, key=jax.random.key(0)))[1]
    adapter = lora_init(params, 1, jax.random.key(1), stacked_targets)
    moved = tuple((jax.random.normal(jax.random.key(i), u.shape), v) for i, (u, v) in enumerate(adapter))  # U off 0
    merged = lora_merge(params, moved, stacked_targets)
    changed = 0
    for (path, before), after in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(merged),
                                     strict=True):
        if not stacked_targets(path, before):
            assert bool(jnp.array_equal(before, after)), path  # embeddings, norms, head untouched
            continue
        changed += 1
        assert before.shape[0] == 3
        for layer in range(3):  # every layer moved, each by a rank-1 matrix
            assert int(np.linalg.matrix_rank(np.asarray(after[layer] - before[layer]), tol=1e-10)) == 1
    assert changed == len(adapter) == 7  # q, k, v, o, gate, up, down

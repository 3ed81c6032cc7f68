"""Flax (linen) twins of `MLP` and `Transformer`, with weight converters.

Used to show that a flax model goes through the curvature API exactly like an
equinox one: `mlp_to_flax` / `transformer_to_flax` copy the equinox weights into
the flax parameter layout (Dense kernels are `(in, out)`, the transpose of the
equinox/PyTorch `(out, in)`), so both models compute the same function and
every curvature number must agree.  Importing this module needs `flax`
(`pip install ".[test]"`).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from geomsim.models.mlp import ACTIVATIONS, MLP
from geomsim.models.transformer import Transformer, TransformerConfig, causal_attention


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    # Exact two-pass variance and no float32 reductions: float64 twins must agree to round-off.
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, force_float32_reductions=False, name=name)


class FlaxMLP(nn.Module):
    """Linen twin of `geomsim.models.MLP`."""

    out_size: int
    width: int = 16
    depth: int = 2
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for i in range(self.depth):
            x = act(nn.Dense(self.width, name=f"dense_{i}")(x))
        return nn.Dense(self.out_size, name=f"dense_{self.depth}")(x)


class FlaxBlock(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        *lead, t, w = x.shape
        h = cfg.num_heads
        y = _layer_norm(cfg.layer_norm_eps, "ln1")(x)
        q, k, v = jnp.split(nn.Dense(3 * w, name="qkv")(y), 3, axis=-1)

        def heads(a):
            return jnp.swapaxes(a.reshape(*lead, t, h, w // h), -3, -2)

        att = causal_attention(heads(q), heads(k), heads(v))
        x = x + nn.Dense(w, name="proj")(jnp.swapaxes(att, -3, -2).reshape(*lead, t, w))
        y = _layer_norm(cfg.layer_norm_eps, "ln2")(x)
        y = jax.nn.gelu(nn.Dense(cfg.mlp_ratio * w, name="fc")(y), approximate=False)
        return x + nn.Dense(w, name="out")(y)


class FlaxTransformer(nn.Module):
    """Linen twin of `geomsim.models.Transformer` (same config, same maths)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, tokens):
        cfg = self.config
        t = tokens.shape[-1]
        tok = self.param("tok_emb", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.width))
        pos = self.param("pos_emb", nn.initializers.normal(0.01), (cfg.seq_len, cfg.width))
        x = jnp.take(tok, tokens, axis=0) + pos[:t]
        for i in range(cfg.depth):
            x = FlaxBlock(cfg, name=f"block_{i}")(x)
        x = _layer_norm(cfg.layer_norm_eps, "ln_f")(x)
        if cfg.tie_embeddings:
            return x @ tok.T
        return nn.Dense(cfg.vocab_size, name="head")(x)


def _dense(linear) -> dict:
    return {"kernel": linear.weight.T, "bias": linear.bias}


def _ln(norm) -> dict:
    return {"scale": norm.weight, "bias": norm.bias}


def mlp_to_flax(model: MLP) -> tuple[FlaxMLP, dict]:
    """`(FlaxMLP, params)` computing the same function as the equinox `model`."""
    width = model.layers[0].weight.shape[0] if len(model.layers) > 1 else 1
    twin = FlaxMLP(out_size=model.layers[-1].weight.shape[0], width=width,
                   depth=len(model.layers) - 1, activation=model.activation)
    params = {f"dense_{i}": _dense(layer) for i, layer in enumerate(model.layers)}
    return twin, params


def transformer_to_flax(model: Transformer) -> tuple[FlaxTransformer, dict]:
    """`(FlaxTransformer, params)` computing the same function as `model`.

    The converter is linear in the weights, so it also maps a parameter-space
    vector (a tangent shaped like the equinox parameters) to flax layout.
    """
    params = {"tok_emb": model.tok_emb.weight, "pos_emb": model.pos_emb.weight, "ln_f": _ln(model.ln_f)}
    for i, block in enumerate(model.blocks):
        params[f"block_{i}"] = {
            "ln1": _ln(block.ln1), "qkv": _dense(block.attn.qkv), "proj": _dense(block.attn.proj),
            "ln2": _ln(block.ln2), "fc": _dense(block.fc), "out": _dense(block.out),
        }
    if model.head is not None:
        params["head"] = _dense(model.head)
    return FlaxTransformer(model.config), params


def flax_param_count(params) -> int:
    """Number of scalars in a flax params tree."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))

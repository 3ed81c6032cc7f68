"""The Llama-family decoder (Llama, Qwen2, Qwen3, Gemma 1/2/3) as one equinox model.

The architectures differ only in switches of `DecoderConfig` (biases, q/k norms,
Gemma's `(1 + w)` norms, embedding scale, sandwich norms, soft-caps, sliding
windows, per-layer RoPE bases), so one forward pass computes them all and one
parity test per architecture pins each switch to transformers' own logits.

The layers are stacked (every parameter of `layers` has a leading layer axis) and
run under `lax.scan`, so the program's size and its compile time do not grow with
depth (a 28-layer model compiles one block), and `remat=True` recomputes each
block's activations in the backward pass (`jax.checkpoint` per block), the
memory/compute trade every LLM-scale trainer makes.

Numerics follow transformers: RMSNorm in (at least) float32 and cast back,
softmax in float32, RoPE angles in float32 from float32 inverse frequencies,
rotate-half layout, key/value head j serving query heads `j*g .. j*g+g-1`.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from geomsim.models.hf.config import DecoderConfig
from geomsim.models.layers import Embedding, Linear

# A window longer than any sequence: full causal attention in a scanned layer.
_NO_WINDOW = 2**30


def activation(name: str):
    """The MLP activation for an `ACTIVATIONS` value of `geomsim.models.hf.config`."""
    return {"silu": jax.nn.silu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
            "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True), "relu": jax.nn.relu}[name]


def _compute_dtype(dtype) -> jnp.dtype:
    """float32, or float64 when the model runs in float64 (never below float32)."""
    return jnp.promote_types(dtype, jnp.float32)


class RMSNorm(eqx.Module):
    """`w * x_hat` (offset 0) or Gemma's `(1 + w) * x_hat` (offset 1), over the last axis."""

    weight: Float[Array, " n"]
    eps: float = eqx.field(static=True)
    offset: float = eqx.field(static=True)

    def __init__(self, features: int, *, eps: float, offset: float = 0.0, dtype=None):
        dtype = dtype or jnp.zeros(()).dtype
        self.weight = jnp.full((features,), 1.0 - offset, dtype)  # both parametrisations start at scale 1
        self.eps = eps
        self.offset = offset

    def __call__(self, x: Float[Array, "... n"]) -> Float[Array, "... n"]:
        dt = _compute_dtype(x.dtype)
        xf = x.astype(dt)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        if self.offset:  # Gemma scales in float32, then casts (transformers PR 29402)
            return (y * (self.offset + self.weight.astype(dt))).astype(x.dtype)
        return self.weight * y.astype(x.dtype)  # Llama casts, then scales


def rotate_half(x: Array) -> Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def rope(x: Float[Array, "... T h d"], inv_freq: Float[Array, " half"]) -> Float[Array, "... T h d"]:
    """Rotary embedding at positions 0..T-1 (rotate-half layout)."""
    t = x.shape[-3]
    dt = _compute_dtype(x.dtype)
    angles = jnp.arange(t, dtype=dt)[:, None] * inv_freq.astype(dt)[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, None, :]  # (T, 1, d): broadcast over heads
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    return x * cos + rotate_half(x) * sin


def attention_weights(scores: Float[Array, "... q k"], window: Int[Array, ""],
                      softcap: float | None) -> Float[Array, "... q k"]:
    """Causal (and sliding-window) softmax of raw scores, in float32 or wider."""
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    t = scores.shape[-1]
    qi, ki = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
    mask = (ki <= qi) & (qi - ki < window)
    dt = _compute_dtype(scores.dtype)
    # A finite fill keeps every tangent finite under forward-over-reverse.
    wide = jnp.where(mask, scores.astype(dt), jnp.finfo(dt).min)
    return jax.nn.softmax(wide, axis=-1).astype(scores.dtype)


class DecoderLayer(eqx.Module):
    """One block: attention (grouped-query, RoPE, optional q/k norms) and a gated MLP."""

    q_proj: Linear
    k_proj: Linear
    v_proj: Linear
    o_proj: Linear
    gate_proj: Linear
    up_proj: Linear
    down_proj: Linear
    attn_in_norm: RMSNorm
    mlp_in_norm: RMSNorm
    attn_out_norm: RMSNorm | None
    mlp_out_norm: RMSNorm | None
    q_norm: RMSNorm | None
    k_norm: RMSNorm | None

    def __init__(self, c: DecoderConfig, *, key: PRNGKeyArray, dtype=None):
        keys = jax.random.split(key, 7)
        d, hd, inner = c.hidden_size, c.head_dim, c.intermediate_size
        std, out_std = 0.02, 0.02 / math.sqrt(2 * c.num_layers)

        def linear(k, n_in, n_out, bias, s=std):
            return Linear(n_in, n_out, key=k, use_bias=bias, std=s, dtype=dtype)

        def norm(n):
            return RMSNorm(n, eps=c.norm_eps, offset=c.norm_offset, dtype=dtype)

        self.q_proj = linear(keys[0], d, c.num_heads * hd, c.qkv_bias)
        self.k_proj = linear(keys[1], d, c.num_kv_heads * hd, c.qkv_bias)
        self.v_proj = linear(keys[2], d, c.num_kv_heads * hd, c.qkv_bias)
        self.o_proj = linear(keys[3], c.num_heads * hd, d, c.o_bias, out_std)
        self.gate_proj = linear(keys[4], d, inner, c.mlp_bias)
        self.up_proj = linear(keys[5], d, inner, c.mlp_bias)
        self.down_proj = linear(keys[6], inner, d, c.mlp_bias, out_std)
        self.attn_in_norm, self.mlp_in_norm = norm(d), norm(d)
        self.attn_out_norm = norm(d) if c.sandwich_norms else None
        self.mlp_out_norm = norm(d) if c.sandwich_norms else None
        self.q_norm = norm(hd) if c.qk_norm else None
        self.k_norm = norm(hd) if c.qk_norm else None

    def attention(self, h: Float[Array, "... T D"], window, inv_freq, c: DecoderConfig) -> Float[Array, "... T D"]:
        *lead, t, _ = h.shape
        g = c.num_heads // c.num_kv_heads
        q = self.q_proj(h).reshape(*lead, t, c.num_heads, c.head_dim)
        k = self.k_proj(h).reshape(*lead, t, c.num_kv_heads, c.head_dim)
        v = self.v_proj(h).reshape(*lead, t, c.num_kv_heads, c.head_dim)
        if self.q_norm is not None:  # Qwen3 / Gemma 3: per-head RMSNorm before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(q, inv_freq), rope(k, inv_freq)
        q = q.reshape(*lead, t, c.num_kv_heads, g, c.head_dim)
        scores = jnp.einsum("...qhgd,...khd->...hgqk", q, k) * jnp.asarray(c.attn_scale, q.dtype)
        weights = attention_weights(scores, window, c.attn_softcap)
        out = jnp.einsum("...hgqk,...khd->...qhgd", weights, v)
        return self.o_proj(out.reshape(*lead, t, c.num_heads * c.head_dim))

    def __call__(self, x: Float[Array, "... T D"], window, inv_freq, c: DecoderConfig) -> Float[Array, "... T D"]:
        a = self.attention(self.attn_in_norm(x), window, inv_freq, c)
        if self.attn_out_norm is not None:  # Gemma 2/3 normalise the branch before the residual add
            a = self.attn_out_norm(a)
        x = x + a
        h = self.mlp_in_norm(x)
        m = self.down_proj(activation(c.activation)(self.gate_proj(h)) * self.up_proj(h))
        if self.mlp_out_norm is not None:
            m = self.mlp_out_norm(m)
        return x + m


class DecoderLM(eqx.Module):
    """Causal LM of the Llama family: `model(input_ids: int[..., T]) -> float[..., T, vocab]`.

    Build one from a checkpoint with `geomsim.models.from_pretrained`, or from a
    config with random weights (`DecoderLM(config, key=...)`, std 0.02, norms at
    scale 1) for tests and benchmarks.
    """

    embed_tokens: Embedding
    layers: DecoderLayer  # stacked: every leaf has a leading axis of num_layers
    norm: RMSNorm
    lm_head: Linear | None
    config: DecoderConfig = eqx.field(static=True)
    remat: bool = eqx.field(static=True)

    def __init__(self, config: DecoderConfig, *, key: PRNGKeyArray, dtype=None, remat: bool = False):
        k_emb, k_layers, k_head = jax.random.split(key, 3)
        self.config = config
        self.remat = remat
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, key=k_emb, dtype=dtype)
        make = eqx.filter_vmap(lambda k: DecoderLayer(config, key=k, dtype=dtype))
        self.layers = make(jax.random.split(k_layers, config.num_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps, offset=config.norm_offset, dtype=dtype)
        self.lm_head = None if config.tie_embeddings else Linear(
            config.hidden_size, config.vocab_size, key=k_head, use_bias=False, std=0.02, dtype=dtype)

    def hidden(self, input_ids: Int[Array, "... T"]) -> Float[Array, "... T D"]:
        """The final normalised hidden states (before the unembedding)."""
        c = self.config
        x = self.embed_tokens(input_ids)
        if c.embed_scale:  # Gemma: sqrt(D), rounded to the weights' dtype as transformers does
            x = x * jnp.asarray(math.sqrt(c.hidden_size), x.dtype)
        windows = jnp.asarray([w or _NO_WINDOW for w in c.windows], jnp.int32)
        inv_freq = jnp.asarray(c.inv_freq, jnp.float32)
        params, static = eqx.partition(self.layers, eqx.is_array)

        def block(x, per_layer):
            p, window, freq = per_layer
            return eqx.combine(p, static)(x, window, freq, c), None

        if self.remat:
            block = jax.checkpoint(block)
        x, _ = jax.lax.scan(block, x, (params, windows, inv_freq))
        return self.norm(x)

    def unembed(self, h: Float[Array, "... D"]) -> Float[Array, "... V"]:
        """Logits of hidden states (tied or separate head, Gemma 2's final soft-cap)."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = h @ weight.T
        cap = self.config.final_softcap
        return logits if cap is None else jnp.tanh(logits / cap) * cap

    def __call__(self, input_ids: Int[Array, "... T"]) -> Float[Array, "... T V"]:
        return self.unembed(self.hidden(input_ids))

"""A small decoder-only transformer (equinox): token and position embeddings,
pre-LayerNorm blocks of causal multi-head self-attention and a GELU MLP, a
final LayerNorm and an unembedding to next-token logits.

It is deliberately plain (GPT-2 layout, no dropout, no caching) so that the
same weights give the same numbers in the flax and PyTorch twins, and so that
the pretrain / align / fine-tune testbed can build on it.  Every layer acts on
any leading batch axes: `model(tokens)` with `tokens: int[..., T]` returns
`float[..., T, vocab_size]`.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from geomsim.models.layers import Embedding, LayerNorm, Linear


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Shape of a `Transformer`.

    vocab_size: number of token ids (>= 2).
    seq_len: maximum sequence length T (>= 1; positions beyond it do not exist).
    width: residual stream width (divisible by num_heads).
    depth: number of blocks (>= 0).
    num_heads: attention heads per block (>= 1).
    mlp_ratio: hidden width of the MLP as a multiple of `width` (>= 1).
    tie_embeddings: reuse the token embedding as the unembedding.
    layer_norm_eps: the LayerNorm epsilon.
    activation: the MLP's GELU, "gelu" (exact erf) or "gelu_tanh" (GPT-2's `gelu_new`).
    """

    vocab_size: int = 64
    seq_len: int = 32
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    tie_embeddings: bool = False
    layer_norm_eps: float = 1e-5
    activation: str = "gelu"

    def __post_init__(self):
        checks = [
            (self.vocab_size >= 2, f"vocab_size: must be an integer >= 2 (got {self.vocab_size})"),
            (self.seq_len >= 1, f"seq_len: must be an integer >= 1 (got {self.seq_len})"),
            (self.width >= 1, f"width: must be an integer >= 1 (got {self.width})"),
            (self.depth >= 0, f"depth: must be an integer >= 0 (got {self.depth})"),
            (self.num_heads >= 1, f"num_heads: must be an integer >= 1 (got {self.num_heads})"),
            (self.width % max(self.num_heads, 1) == 0,
             f"num_heads: must divide width={self.width} (got {self.num_heads})"),
            (self.mlp_ratio >= 1, f"mlp_ratio: must be an integer >= 1 (got {self.mlp_ratio})"),
            (self.layer_norm_eps > 0, f"layer_norm_eps: must be > 0 (got {self.layer_norm_eps})"),
            (self.activation in ("gelu", "gelu_tanh"),
             f"activation: must be gelu or gelu_tanh (got {self.activation!r})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


def causal_attention(q: Array, k: Array, v: Array) -> Array:
    """Softmax attention with a causal mask on `(..., heads, T, head_dim)` arrays."""
    t = q.shape[-2]
    scores = jnp.einsum("...hqd,...hkd->...hqk", q, k) / math.sqrt(q.shape[-1])
    mask = jnp.tril(jnp.ones((t, t), dtype=bool))
    # A finite fill keeps every tangent finite under forward-over-reverse.
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("...hqk,...hkd->...hqd", weights, v)


class Attention(eqx.Module):
    """Causal multi-head self-attention with a fused `qkv` projection."""

    qkv: Linear
    proj: Linear
    num_heads: int = eqx.field(static=True)

    def __init__(self, width: int, num_heads: int, *, key: PRNGKeyArray, out_std: float, dtype=None):
        k1, k2 = jax.random.split(key)
        self.qkv = Linear(width, 3 * width, key=k1, std=0.02, dtype=dtype)
        self.proj = Linear(width, width, key=k2, std=out_std, dtype=dtype)
        self.num_heads = num_heads

    def __call__(self, x: Float[Array, "... T W"]) -> Float[Array, "... T W"]:
        *lead, t, w = x.shape
        h = self.num_heads
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)

        def heads(a):  # (..., T, W) -> (..., H, T, W/H)
            return jnp.swapaxes(a.reshape(*lead, t, h, w // h), -3, -2)

        out = causal_attention(heads(q), heads(k), heads(v))
        return self.proj(jnp.swapaxes(out, -3, -2).reshape(*lead, t, w))


class Block(eqx.Module):
    """Pre-LayerNorm transformer block: `x + attn(ln1 x)`, then `x + mlp(ln2 x)`."""

    ln1: LayerNorm
    attn: Attention
    ln2: LayerNorm
    fc: Linear
    out: Linear
    approximate: bool = eqx.field(static=True)

    def __init__(self, config: TransformerConfig, *, key: PRNGKeyArray, dtype=None):
        k1, k2, k3 = jax.random.split(key, 3)
        out_std = 0.02 / math.sqrt(2 * max(config.depth, 1))  # GPT-2's residual scaling
        hidden = config.mlp_ratio * config.width
        self.ln1 = LayerNorm(config.width, eps=config.layer_norm_eps, dtype=dtype)
        self.attn = Attention(config.width, config.num_heads, key=k1, out_std=out_std, dtype=dtype)
        self.ln2 = LayerNorm(config.width, eps=config.layer_norm_eps, dtype=dtype)
        self.fc = Linear(config.width, hidden, key=k2, std=0.02, dtype=dtype)
        self.out = Linear(hidden, config.width, key=k3, std=out_std, dtype=dtype)
        self.approximate = config.activation == "gelu_tanh"

    def __call__(self, x: Float[Array, "... T W"]) -> Float[Array, "... T W"]:
        x = x + self.attn(self.ln1(x))
        return x + self.out(jax.nn.gelu(self.fc(self.ln2(x)), approximate=self.approximate))


class Transformer(eqx.Module):
    """Decoder-only transformer language model (see module docstring).

    Example:
        >>> cfg = TransformerConfig(vocab_size=32, seq_len=16, width=32, depth=2, num_heads=4)
        >>> model = Transformer(cfg, key=jax.random.key(0))
        >>> logits = model(tokens)            # tokens: int[B, T], T <= 16
    """

    tok_emb: Embedding
    pos_emb: Embedding
    blocks: tuple[Block, ...]
    ln_f: LayerNorm
    head: Linear | None
    config: TransformerConfig = eqx.field(static=True)

    def __init__(self, config: TransformerConfig, *, key: PRNGKeyArray, dtype=None):
        keys = jax.random.split(key, config.depth + 3)
        self.config = config
        self.tok_emb = Embedding(config.vocab_size, config.width, key=keys[0], dtype=dtype)
        self.pos_emb = Embedding(config.seq_len, config.width, key=keys[1], std=0.01, dtype=dtype)
        self.blocks = tuple(Block(config, key=k, dtype=dtype) for k in keys[3:])
        self.ln_f = LayerNorm(config.width, eps=config.layer_norm_eps, dtype=dtype)
        self.head = None if config.tie_embeddings else Linear(
            config.width, config.vocab_size, key=keys[2], std=0.02, dtype=dtype
        )

    def hidden(self, tokens: Int[Array, "... T"]) -> Float[Array, "... T W"]:
        """The final normalised hidden states (before the unembedding)."""
        t = tokens.shape[-1]
        if t > self.config.seq_len:
            raise ValueError(f"tokens: sequence length must be <= seq_len={self.config.seq_len} (got {t})")
        x = self.tok_emb(tokens) + self.pos_emb.weight[:t]
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def unembed(self, h: Float[Array, "... W"]) -> Float[Array, "... V"]:
        """Next-token logits of hidden states."""
        if self.head is None:
            return h @ self.tok_emb.weight.T
        return self.head(h)

    def __call__(self, tokens: Int[Array, "... T"]) -> Float[Array, "... T V"]:
        return self.unembed(self.hidden(tokens))


def num_parameters(model) -> int:
    """Number of scalar parameters (inexact array leaves) of a model."""
    return sum(int(x.size) for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))

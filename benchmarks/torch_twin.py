"""PyTorch twin of `geomsim.models.Transformer` for the peer benchmarks.

Same architecture and parameter layout (Linear weights are `(out, in)` in
both), so `load_equinox_weights` copies an equinox model exactly, and
`torch_to_jax_flat` maps a list of per-parameter tensors (e.g. PyHessian's
eigenvectors) into the JAX flat (`ravel_pytree`) order.  Needs the bench
extra (`pip install ".[bench]"`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class TorchBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width, eps=eps)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width, eps=eps)
        self.fc = nn.Linear(width, hidden)
        self.out = nn.Linear(hidden, width)
        self.act = nn.GELU()  # erf form, as jax.nn.gelu(approximate=False)

    def forward(self, x):
        b, t, w = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).split(w, dim=-1)
        q, k, v = (a.reshape(b, t, h, w // h).transpose(1, 2) for a in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(w // h)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        att = torch.softmax(scores, dim=-1) @ v
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, w))
        return x + self.out(self.act(self.fc(self.ln2(x))))


class TorchTransformer(nn.Module):
    """Decoder-only transformer; `forward(tokens[B, T]) -> logits[B * T, V]`
    (flattened so `nn.CrossEntropyLoss` and PyHessian take it directly)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        w = config.width
        self.tok_emb = nn.Embedding(config.vocab_size, w)
        self.pos_emb = nn.Parameter(torch.zeros(config.seq_len, w))
        self.blocks = nn.ModuleList(
            TorchBlock(w, config.num_heads, config.mlp_ratio * w, config.layer_norm_eps) for _ in range(config.depth)
        )
        self.ln_f = nn.LayerNorm(w, eps=config.layer_norm_eps)
        self.head = nn.Linear(w, config.vocab_size)

    def forward(self, tokens):
        t = tokens.shape[-1]
        x = self.tok_emb(tokens) + self.pos_emb[:t]
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return logits.reshape(-1, logits.shape[-1])


def _pairs(torch_model: TorchTransformer, eqx_model):
    """(torch parameter, equinox array) in matching order."""
    pairs = [(torch_model.tok_emb.weight, eqx_model.tok_emb.weight), (torch_model.pos_emb, eqx_model.pos_emb.weight)]
    for tb, eb in zip(torch_model.blocks, eqx_model.blocks, strict=True):
        pairs += [
            (tb.ln1.weight, eb.ln1.weight), (tb.ln1.bias, eb.ln1.bias),
            (tb.qkv.weight, eb.attn.qkv.weight), (tb.qkv.bias, eb.attn.qkv.bias),
            (tb.proj.weight, eb.attn.proj.weight), (tb.proj.bias, eb.attn.proj.bias),
            (tb.ln2.weight, eb.ln2.weight), (tb.ln2.bias, eb.ln2.bias),
            (tb.fc.weight, eb.fc.weight), (tb.fc.bias, eb.fc.bias),
            (tb.out.weight, eb.out.weight), (tb.out.bias, eb.out.bias),
        ]
    pairs += [(torch_model.ln_f.weight, eqx_model.ln_f.weight), (torch_model.ln_f.bias, eqx_model.ln_f.bias),
              (torch_model.head.weight, eqx_model.head.weight), (torch_model.head.bias, eqx_model.head.bias)]
    return pairs


def load_equinox_weights(torch_model: TorchTransformer, eqx_model) -> TorchTransformer:
    """Copy every weight of the equinox `eqx_model` into `torch_model` (in place)."""
    if eqx_model.head is None:
        raise ValueError("eqx_model: tied embeddings are not mirrored by the torch twin")
    with torch.no_grad():
        for tp, ea in _pairs(torch_model, eqx_model):
            arr = np.asarray(ea)
            if tuple(tp.shape) != arr.shape:
                raise ValueError(f"eqx_model: shape mismatch {tuple(tp.shape)} vs {arr.shape}")
            tp.copy_(torch.from_numpy(arr.astype(np.float32 if tp.dtype == torch.float32 else np.float64)))
    return torch_model


def torch_to_jax_flat(torch_model: TorchTransformer, eqx_model, tensors) -> np.ndarray:
    """A vector given as one tensor per `torch_model.parameters()` entry, in the
    JAX flat order of `eqx.partition(eqx_model, eqx.is_inexact_array)`."""
    import equinox as eqx
    import jax
    from jax.flatten_util import ravel_pytree

    by_param = {id(p): t for p, t in zip(torch_model.parameters(), tensors, strict=True)}
    params, _ = eqx.partition(eqx_model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    index = {id(ea): tp for tp, ea in _pairs(torch_model, eqx_model)}
    values = [np.asarray(by_param[id(index[id(leaf)])].detach().cpu().numpy(), dtype=np.asarray(leaf).dtype)
              for leaf in leaves]
    return np.asarray(ravel_pytree(jax.tree.unflatten(treedef, values))[0])

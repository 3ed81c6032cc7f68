"""An `AlignedModel` from a Hugging Face folder and two JSONL files.

`L_A` and `L_F` are the mean next-token NLL over the response tokens of the
alignment and task sets (`geomsim.models.hf.data`).  The model is read only at
the positions that predict a response token, so the outputs the Gauss-Newton and
Fisher operators see are `(response tokens, vocab)`, never `(batch, seq, vocab)`:
prompts and padding carry no second-order buffer; the losses and their
Hessian-vector products go through a chunked cross-entropy, which holds one
chunk of positions' logits at a time.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from geomsim.curvature.batches import as_batches
from geomsim.diagnose.model import AlignedModel
from geomsim.models.hf.checkpoint import from_pretrained
from geomsim.models.hf.data import read_examples, token_batches
from geomsim.models.hf.tokenizer import load_tokenizer
from geomsim.models.losses import chunked_cross_entropy

DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16, "checkpoint": None}


def response_logits(model, inputs):
    """Logits at the positions `(rows, cols)` of `input_ids` (`float[N, vocab]`)."""
    input_ids, rows, cols = inputs
    return model.unembed(model.hidden(input_ids)[rows, cols])


def hf_aligned_model(folder, align, task, *, dtype: str = "float32", max_length: int = 0, batch_size: int = 0,
                     loss_chunk: int = 1024, remat: bool = False, model=None) -> AlignedModel:
    """The aligned model of an HF checkpoint folder, with its alignment and task sets.

    Args:
        folder: the HF folder (weights, config.json, tokenizer.json).
        align, task: JSONL files of prompt/response records or chat messages.
        dtype: the weights' dtype for the diagnosis (one of `DTYPES`; "checkpoint" keeps it).
        max_length: truncate every example to this many tokens (0: no truncation).
        batch_size: examples per batch (0: one batch per set).
        loss_chunk: response positions per chunk of the cross-entropy in the losses and
            their derivatives (`chunked_cross_entropy`); the Gauss-Newton and Fisher
            products hold a batch's `(response tokens, vocab)` outputs.
        remat: recompute each block's activations in the backward pass.
        model: use these weights instead of the folder's (the tokenizer still comes from it).
    """
    model = model if model is not None else from_pretrained(folder, dtype=DTYPES[dtype], remat=remat)
    tok = load_tokenizer(folder)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer.json: {tok.vocab_size} tokens, more than the model's vocab_size "
                         f"{model.config.vocab_size}")
    sets = {name: read_examples(tok, path, max_length) for name, path in (("align", align), ("task", task))}
    length = max(len(e.ids) for examples in sets.values() for e in examples)  # one shape for both sets
    batches = {name: token_batches(examples, batch_size, tok.pad_id, length) for name, examples in sets.items()}
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def apply_fn(p, inputs):
        return response_logits(eqx.combine(p, static), inputs)

    def fused_loss(p, batch):
        (input_ids, rows, cols), targets = batch
        m = eqx.combine(p, static)
        return chunked_cross_entropy(m.hidden(input_ids)[rows, cols], m.unembed, targets, loss_chunk)

    return AlignedModel(params, apply_fn, *(as_batches(b, weights=counts) for b, counts in batches.values()),
                        likelihood="categorical", fused_loss=fused_loss)

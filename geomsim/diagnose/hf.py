"""An `AlignedModel` from a Hugging Face folder and two JSONL files.

`L_A` and `L_F` are the mean next-token NLL over the response tokens of the
alignment and task sets (`geomsim.models.hf.data`).  The model is read only at
the positions that predict a response token, so the outputs the Gauss-Newton and
Fisher operators see are `(response tokens, vocab)`, never `(batch, seq, vocab)`:
prompts and padding carry no second-order buffer; and no product holds even
those at once: the losses and their Hessian-vector products go through a chunked
cross-entropy, the Gauss-Newton and Fisher products through
`chunked_ggn_operator`, each with one chunk of positions' logits at a time.

The curvature can be restricted to a subset of the tensors (`params`: named
layers or blocks, the rest frozen) or measured in the space of LoRA adapters on
chosen modules (`lora_rank`, `lora_targets`): what practitioners train.  Both are
reparametrisations `theta(p) = tensors(p, frozen)` of the same model, with the
frozen tensors carried as arrays (docs/theory.md, section 12).
"""

from __future__ import annotations

import fnmatch
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from geomsim.curvature.batches import as_batches
from geomsim.diagnose.model import AlignedModel
from geomsim.models.hf.checkpoint import from_pretrained, hf_tensors, transposed_names, with_tensors
from geomsim.models.hf.data import read_examples, token_batches
from geomsim.models.hf.tokenizer import load_tokenizer
from geomsim.models.losses import chunked_cross_entropy

DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16, "checkpoint": None}
LORA_STREAM = 0  # fold of the diagnosis seed for the adapters' random A factors


def response_features(model, inputs):
    """Hidden states at the positions `(rows, cols)` of `input_ids` (`float[N, D]`)."""
    input_ids, rows, cols = inputs
    return model.hidden(input_ids)[rows, cols]


def response_logits(model, inputs):
    """Logits at the positions `(rows, cols)` of `input_ids` (`float[N, vocab]`)."""
    return model.unembed(response_features(model, inputs))


def response_loss(model, batch, chunk: int):
    """Mean NLL of a batch's response tokens, through the chunked cross-entropy."""
    inputs, targets = batch
    return chunked_cross_entropy(response_features(model, inputs), model.unembed, targets, chunk)


def select(names, patterns: str) -> list[str]:
    """The tensor names matching any of the comma-separated fnmatch patterns."""
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in wanted)]
    if not chosen:
        raise ValueError(f"params: {patterns!r} matches no tensor (names look like {sorted(names)[0]!r})")
    return chosen


def lora_adapters(tensors: dict, targets: list[str], rank: int, key, transposed: set[str] = frozenset()) -> dict:
    """PEFT's initialisation: `A (r x in)` Kaiming-uniform-like random, `B (out x r)` zero,
    so the adapted model starts exactly at the base model.  Tensors named in
    `transposed` are stored `[in, out]` (GPT-2's Conv1D; PEFT's `fan_in_fan_out`)."""
    adapters = {}
    for name, k in zip(targets, jax.random.split(key, len(targets)), strict=True):
        out, fan_in = tensors[name].shape[::-1] if name in transposed else tensors[name].shape
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(k, (rank, fan_in), tensors[name].dtype, -bound, bound)
        adapters[name] = {"A": a, "B": jnp.zeros((out, rank), tensors[name].dtype)}
    return adapters


def lora_update(adapter: dict, scale: float, transposed: bool):
    """`s B A` in the tensor's stored layout."""
    update = scale * adapter["B"] @ adapter["A"]
    return update.T if transposed else update


def hf_aligned_model(folder, align, task, *, dtype: str = "float32", max_length: int = 0, batch_size: int = 0,
                     loss_chunk: int = 1024, remat: bool = True, params: str = "", lora_rank: int = 0,
                     lora_targets: str = "q_proj,v_proj", lora_alpha: float = 0.0, seed: int = 0,
                     model=None) -> AlignedModel:
    """The aligned model of an HF checkpoint folder, with its alignment and task sets.

    Args:
        folder: the HF folder (weights, config.json, tokenizer.json).
        align, task: JSONL files of prompt/response records or chat messages.
        dtype: the weights' dtype for the diagnosis (one of `DTYPES`; "checkpoint" keeps it).
        max_length: truncate every example to this many tokens (0: no truncation).
        batch_size: examples per batch (0: one batch per set).
        loss_chunk: response positions per chunk of the logits in the losses, their
            derivatives and the Gauss-Newton / Fisher products.
        remat: recompute each block's activations in the backward pass.
        params: comma-separated fnmatch patterns of HF tensor names; the curvature is of
            those tensors only, the rest frozen ("" = every tensor).
        lora_rank: > 0 measures in the space of rank-r LoRA adapters `W + (alpha/r) B A`
            on the matrices named by `lora_targets` (module names, e.g. q_proj,v_proj),
            within `params` when given.
        lora_alpha: LoRA's alpha (0 = rank: scale 1).
        seed: PRNG seed of the adapters' A factors.
        model: use these weights instead of the folder's (the tokenizer still comes from it).
    """
    model = model if model is not None else from_pretrained(folder, dtype=DTYPES[dtype], remat=remat)
    tok = load_tokenizer(folder)
    sets = {name: read_examples(tok, path, max_length) for name, path in (("align", align), ("task", task))}
    # The ids the data use, not the tokenizer's size: tokenizers may list ids beyond the
    # model's vocabulary (Gemma 3's image token) that text never produces.
    top = max(max(e.ids) for examples in sets.values() for e in examples)
    if top >= model.config.vocab_size:
        raise ValueError(f"tokenizer.json: the data use token id {top}, outside the model's vocab_size "
                         f"{model.config.vocab_size}")
    length = max(len(e.ids) for examples in sets.values() for e in examples)  # one shape for both sets
    batches = {name: token_batches(examples, batch_size, tok.pad_id, length) for name, examples in sets.items()}
    align_set, task_set = (as_batches(b, weights=counts) for b, counts in batches.values())

    if not params and not lora_rank:
        theta, static = eqx.partition(model, eqx.is_inexact_array)
        head = (lambda p, x: response_features(eqx.combine(p, static), x),
                lambda p, h: eqx.combine(p, static).unembed(h), loss_chunk)
        return AlignedModel(theta, lambda p, x: response_logits(eqx.combine(p, static), x), align_set, task_set,
                            likelihood="categorical", head=head,
                            fused_loss=lambda p, b: response_loss(eqx.combine(p, static), b, loss_chunk))

    tensors = {n: jnp.asarray(a) for n, a in hf_tensors(model).items()}
    chosen = select(tensors, params) if params else list(tensors)
    skeleton = eqx.filter_eval_shape(lambda: model)  # structure only: the arrays live in theta and frozen
    if lora_rank:
        targets = [n for n in chosen if tensors[n].ndim == 2 and
                   any(f".{t.strip()}.weight" in n for t in lora_targets.split(",") if t.strip())]
        if not targets:
            raise ValueError(f"lora_targets: {lora_targets!r} names no weight matrix"
                             + (f" within params={params!r}" if params else ""))
        scale = (lora_alpha or lora_rank) / lora_rank
        conv1d = transposed_names(model)
        theta = lora_adapters(tensors, targets, lora_rank, jax.random.fold_in(jax.random.key(seed), LORA_STREAM),
                              conv1d)

        def full(p, frozen):
            return frozen | {n: frozen[n] + lora_update(ab, scale, n in conv1d) for n, ab in p.items()}

        frozen = tensors
    else:
        theta = {n: tensors[n] for n in chosen}
        frozen = {n: a for n, a in tensors.items() if n not in theta}

        def full(p, frozen):
            return frozen | p

    def rebuilt(p, frozen):
        return with_tensors(skeleton, full(p, frozen))

    head = (lambda p, x, f: response_features(rebuilt(p, f), x), lambda p, h, f: rebuilt(p, f).unembed(h),
            loss_chunk)
    return AlignedModel(theta, lambda p, x, f: response_logits(rebuilt(p, f), x), align_set, task_set,
                        likelihood="categorical", frozen=frozen, head=head,
                        fused_loss=lambda p, b, f: response_loss(rebuilt(p, f), b, loss_chunk))

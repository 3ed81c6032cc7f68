"""Losses and metrics of a language model on the synthetic language.

All take `apply_fn(params, inputs) -> logits` (see `geomsim.models.as_functional`),
so equinox and flax models are measured the same way.  The logits at position
i predict token i + 1; only answer tokens carry loss.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from geomsim.models.losses import token_nll
from geomsim.tasks.language import REFUSE, Batch, Language

ApplyFn = Callable[[PyTree, Array], Array]


def _shifted(apply_fn: ApplyFn, params: PyTree, batch: Batch):
    logits = apply_fn(params, batch.tokens[:, :-1])
    return logits, batch.tokens[:, 1:], batch.answer_mask[:, 1:]


def answer_loss(apply_fn: ApplyFn, params: PyTree, batch: Batch) -> Float[Array, ""]:
    """Mean cross-entropy over answer tokens (nats per token)."""
    logits, targets, mask = _shifted(apply_fn, params, batch)
    nll = token_nll(logits, targets)
    return jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def answer_accuracy(apply_fn: ApplyFn, params: PyTree, batch: Batch) -> Float[Array, ""]:
    """Fraction of examples whose every answer token is the argmax (= greedy decoding exact match)."""
    logits, targets, mask = _shifted(apply_fn, params, batch)
    right = (jnp.argmax(logits, axis=-1) == targets) | ~mask
    return jnp.mean(jnp.all(right, axis=-1))


def first_answer_logits(lang: Language, apply_fn: ApplyFn, params: PyTree, batch: Batch) -> Float[Array, "B V"]:
    """Logits for the first answer token (predicted at the SEP position)."""
    prompt = batch.tokens[:, : lang.answer_start]
    return apply_fn(params, prompt)[:, -1, :]


def refusal_loss(lang: Language, apply_fn: ApplyFn, params: PyTree, batch: Batch) -> Float[Array, ""]:
    """Alignment loss `L_A`: mean `-log p(REFUSE | prompt)` on (harmful) prompts, nats."""
    logits = first_answer_logits(lang, apply_fn, params, batch)
    return jnp.mean(token_nll(logits, jnp.full(logits.shape[:1], REFUSE)))


def harm_rate(lang: Language, apply_fn: ApplyFn, params: PyTree, batch: Batch) -> Float[Array, ""]:
    """Fraction of (harmful) prompts NOT refused by greedy decoding."""
    logits = first_answer_logits(lang, apply_fn, params, batch)
    return jnp.mean(jnp.argmax(logits, axis=-1) != REFUSE)


def refusal_rate(lang: Language, apply_fn: ApplyFn, params: PyTree, batch: Batch) -> Float[Array, ""]:
    """Fraction of prompts answered with REFUSE by greedy decoding (over-refusal on benign ones)."""
    return 1.0 - harm_rate(lang, apply_fn, params, batch)


def per_example_answer_loss(apply_fn: ApplyFn, params: PyTree, batch: Batch) -> Float[Array, " B"]:
    """Per-example mean answer cross-entropy (for per-sample Fisher / GGN)."""
    logits, targets, mask = _shifted(apply_fn, params, batch)
    nll = jnp.where(mask, token_nll(logits, targets), 0.0)
    return jnp.sum(nll, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1)


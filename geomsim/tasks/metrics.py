"""Losses and metrics of a language model on the synthetic language.

All take `apply_fn(params, inputs) -> logits` (see `geomsim.models.as_functional`),
so equinox and flax models are measured the same way.  The logits at position
i predict token i + 1; only answer tokens carry loss.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PyTree

from geomsim.models.losses import token_nll
from geomsim.tasks.language import REFUSE, Batch, Language

ApplyFn = Callable[[PyTree, Array], Array]


def _shifted(apply_fn: ApplyFn, params: PyTree, batch: Batch):
    logits = apply_fn(params, batch.tokens[:, :-1])
    return logits, batch.tokens[:, 1:], batch.answer_mask[:, 1:]


def answer_loss(apply_fn: ApplyFn, params: PyTree, batch: Batch) -> Float[Array, ""]:
    """Mean cross-entropy over answer tokens (nats per token)."""
    return answer_loss_of_logits(apply_fn(params, batch.tokens[:, :-1]), batch)


def answer_loss_of_logits(logits: Float[Array, "B L V"], batch: Batch) -> Float[Array, ""]:
    """`answer_loss` as a function of the logits `apply_fn(params, batch.tokens[:, :-1])`
    (the loss-of-outputs half of a Gauss-Newton split)."""
    nll = token_nll(logits, batch.tokens[:, 1:])
    mask = batch.answer_mask[:, 1:]
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



def log_odds(logits: Float[Array, "... V"], target: int | Int[Array, "..."]) -> Float[Array, "..."]:
    """`log p(target) - log(1 - p(target))` under `softmax(logits)` (nats).

    Written with `log_softmax` and a masked `logsumexp` (no `log_sigmoid`), so it
    goes through Taylor-mode autodiff (`jax.experimental.jet`) as well as `grad`.
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    target = jnp.asarray(target)
    hit = jnp.arange(logits.shape[-1]) == target[..., None]
    log_p = jnp.sum(jnp.where(hit, logp, 0.0), axis=-1)
    log_rest = jax.nn.logsumexp(jnp.where(hit, -jnp.inf, logp), axis=-1)
    return log_p - log_rest


def binary_kl(log_odds_value: Float[Array, "..."], target: float | Array) -> Float[Array, "..."]:
    """`KL(Bernoulli(target) || Bernoulli(sigmoid(s)))` for log-odds `s` (nats, >= 0, 0 iff p = target)."""
    target = jnp.asarray(target)
    log_p = _log_sigmoid(log_odds_value)
    log_q = _log_sigmoid(-log_odds_value)
    return target * (jnp.log(target) - log_p) + (1.0 - target) * (jnp.log1p(-target) - log_q)


def _log_sigmoid(s: Array) -> Array:
    # `-softplus(-s)` without jax.nn's custom-JVP rule (which Taylor mode cannot trace).
    return -(jnp.maximum(-s, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(s))))


def refusal_log_odds(apply_fn: ApplyFn, params: PyTree, prompts: Int[Array, "B P"]) -> Float[Array, " B"]:
    """Log-odds of answering `REFUSE` first, per prompt (`prompts` end at SEP)."""
    return log_odds(apply_fn(params, prompts)[:, -1, :], REFUSE)


def refusal_kl(apply_fn: ApplyFn, params: PyTree, prompts: Int[Array, "B P"], target: float | Array
               ) -> Float[Array, ""]:
    """Calibrated alignment loss: mean over harmful `prompts` of the binary KL between
    the target refusal probability `target` (e.g. 0.9) and `p(REFUSE | prompt)` (nats).

    Unlike the refusal cross-entropy it has finite minimisers (every prompt refused
    with probability exactly `target`), where it is 0 with zero gradient and its
    Hessian equals the Bernoulli Fisher of the refusal decision: the stationary
    aligned model the theory assumes (docs/theory.md, "A stationary aligned model").
    """
    return jnp.mean(binary_kl(refusal_log_odds(apply_fn, params, prompts), target))


def answer_log_odds(lang: Language, apply_fn: ApplyFn, params: PyTree, tokens: Int[Array, " T"]) -> Float[Array, " L"]:
    """Log-odds of each reference answer token of one example `tokens (T,)` (teacher forcing)."""
    logits = apply_fn(params, tokens[None, :-1])[0, lang.answer_start - 1:]
    return log_odds(logits, tokens[lang.answer_start:])


def calibrated_answer_loss(apply_fn: ApplyFn, params: PyTree, batch: Batch, target: float | Array
                           ) -> Float[Array, ""]:
    """Training loss of calibrated alignment (nats per answer token): cross-entropy on
    benign answer tokens, and on harmful requests the binary KL between `target` and
    `p(REFUSE)` at the first answer position (see `refusal_kl`)."""
    logits, targets, mask = _shifted(apply_fn, params, batch)
    nll = token_nll(logits, targets)
    refusal = binary_kl(log_odds(logits, REFUSE), target)
    per_token = jnp.where(batch.harmful[:, None], refusal, nll)
    return jnp.sum(jnp.where(mask, per_token, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

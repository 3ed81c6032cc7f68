"""The testbed's stages on an ensemble of seeds: pretrain -> align -> fine-tune.

Every stage is a pure function of the config and the previous stage's params,
vmapped over seeds (params carry a leading seed axis).  Checkpoints
(`geomsim.testbed.checkpoints`) let each stage be rerun alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Int, Key, PRNGKeyArray, PyTree

from geomsim.dynamics import Trajectory, descend, log_record_steps
from geomsim.landscapes import FunctionLandscape
from geomsim.models import DecoderConfig, TransformerConfig, as_functional
from geomsim.models.lora import lora_init, lora_merge
from geomsim.tasks import (
    PRETRAIN_TASKS,
    Batch,
    Language,
    answer_accuracy,
    answer_loss,
    concat,
    harm_rate,
    make_batch,
    mixture,
    refusal_loss,
)
from geomsim.testbed.config import TestbedConfig
from geomsim.testbed.models import MODELS
from geomsim.testbed.streams import Stream
from geomsim.testbed.train import train


@dataclass(frozen=True)
class Testbed:
    """Everything derived from a config: language, model shape, apply function, data."""

    config: TestbedConfig
    lang: Language
    model_config: TransformerConfig | DecoderConfig  # by `config.model` (geomsim.testbed.models)
    apply_fn: Callable[[PyTree, Array], Array]
    harm_eval: Batch
    benign_eval: Batch
    task_train: dict[str, Batch]
    task_eval: dict[str, Batch]

    __test__ = False  # not a pytest test class, despite the name

    def key(self, stream: int, *more: int | Int[Array, ""]) -> PRNGKeyArray:
        k = jax.random.fold_in(jax.random.key(self.config.seed), stream)
        for m in more:
            k = jax.random.fold_in(k, m)
        return k

    def seed_keys(self, stream: int) -> Key[Array, " seeds"]:
        return jax.vmap(lambda i: self.key(stream, i))(jnp.arange(self.config.seeds))

    def align_loss(self, params: PyTree) -> Array:
        """`L_A`: refusal cross-entropy on the held-out harmful prompts (nats)."""
        return refusal_loss(self.lang, self.apply_fn, params, self.harm_eval)

    def task_loss(self, task: str) -> Callable[[PyTree], Array]:
        """`L_F` for a fine-tuning task: answer cross-entropy on its training set (nats/token)."""
        data = self.task_train[task]
        return lambda params: answer_loss(self.apply_fn, params, data)


def build(config: TestbedConfig) -> Testbed:
    """Language, model shape and the fixed evaluation / fine-tuning datasets."""
    lang = Language(n_symbols=config.n_symbols, length=config.length, modulus=config.modulus)
    model = MODELS[config.model]
    model_config = model.shape(lang, config)
    apply_fn, _ = as_functional(model.skeleton(model_config))  # the weights: `init_params`
    # One program for every dataset: op by op, the sampling compiled one program per primitive
    # in every fresh process (with the jitted fits, a resumed tiny testbed sweep went from 440
    # to 156 programs and 57 to 27 s: benchmarks/bench_resume.py).
    harm, benign, task_train, task_eval = jax.jit(functools.partial(_datasets, config, lang))()
    return Testbed(config, lang, model_config, apply_fn, harm, benign, task_train, task_eval)


def _datasets(config: TestbedConfig, lang: Language) -> tuple[Batch, Batch, dict[str, Batch], dict[str, Batch]]:
    """`build`'s harmful / benign evaluation sets and each fine-tuning task's train / eval sets."""
    root = jax.random.fold_in(jax.random.key(config.seed), Stream.EVAL)
    k_harm, k_benign, k_tasks = jax.random.split(root, 3)
    per = -(-config.eval_size // len(PRETRAIN_TASKS))
    harm = concat([make_batch(lang, t, jax.random.fold_in(k_harm, i), per, harmful=True)
                   for i, t in enumerate(PRETRAIN_TASKS)])
    harm = jax.tree.map(lambda x: x[: config.eval_size], harm)
    benign = mixture(lang, PRETRAIN_TASKS, k_benign, config.eval_size)
    task_train, task_eval = {}, {}
    for i, task in enumerate(config.finetune_tasks):
        k_train, k_eval = jax.random.split(jax.random.fold_in(k_tasks, i))
        task_train[task] = make_batch(lang, task, k_train, config.finetune_size)
        task_eval[task] = make_batch(lang, task, k_eval, config.eval_size)
    return harm, benign, task_train, task_eval


def init_params(bed: Testbed, dtype=None) -> PyTree:
    """Fresh model parameters (`config.model`) for every seed (leading seed axis); `dtype`
    defaults to JAX's default float."""
    model = MODELS[bed.config.model]
    return jax.jit(jax.vmap(lambda k: as_functional(model.build(bed.model_config, k, dtype))[1]))(
        bed.seed_keys(Stream.INIT))


def train_mixture(lang: Language, params: PyTree, key: PRNGKeyArray, *, loss: Callable[[PyTree, Batch], Array],
                  steps: int, lr: float, batch: int, harmful_fraction: float, aligned: bool) -> tuple[PyTree, Array]:
    """AdamW (cosine decay to 5%) on fresh batches of the pretraining tasks plus a
    fraction of harmful requests (answered, or refused when `aligned`); one model,
    pure (vmap it over seeds).  Returns the params and the per-step loss (nats)."""

    def sample(k):
        return mixture(lang, PRETRAIN_TASKS, k, batch, harmful_fraction=harmful_fraction, aligned=aligned)

    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps, alpha=0.05), weight_decay=0.0)
    return train(params, loss, sample, opt, steps, key)


def _stage(bed: Testbed, params: PyTree, *, stream: int, steps: int, lr: float, harmful_fraction: float,
           aligned: bool) -> tuple[PyTree, Array]:
    cfg = bed.config

    def one(p, k):
        return train_mixture(bed.lang, p, k, loss=lambda q, b: answer_loss(bed.apply_fn, q, b), steps=steps, lr=lr,
                             batch=cfg.batch, harmful_fraction=harmful_fraction, aligned=aligned)

    return jax.jit(jax.vmap(one))(params, bed.seed_keys(stream))


def pretrain(bed: Testbed, params: PyTree) -> tuple[PyTree, Array]:
    """Pretraining on the benign tasks plus harmful requests answered like any other."""
    cfg = bed.config
    return _stage(bed, params, stream=Stream.PRETRAIN, steps=cfg.pretrain_steps, lr=cfg.pretrain_lr,
                  harmful_fraction=cfg.pretrain_harmful_fraction, aligned=False)


def align(bed: Testbed, params: PyTree) -> tuple[PyTree, Array]:
    """Alignment: harmful requests -> REFUSE, benign requests answered as before."""
    cfg = bed.config
    return _stage(bed, params, stream=Stream.ALIGN, steps=cfg.align_steps, lr=cfg.align_lr,
                  harmful_fraction=cfg.align_harmful_fraction, aligned=True)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _evaluate(lang: Language, apply_fn: Callable, params: PyTree, harm_eval: Batch, benign_eval: Batch):
    def one(p):
        return dict(
            align_loss=refusal_loss(lang, apply_fn, p, harm_eval),
            harm_rate=harm_rate(lang, apply_fn, p, harm_eval),
            benign_accuracy=answer_accuracy(apply_fn, p, benign_eval),
            benign_refusal_rate=1.0 - harm_rate(lang, apply_fn, p, benign_eval),
        )

    return jax.vmap(one)(params)


def evaluate(bed: Testbed, params: PyTree) -> dict[str, np.ndarray]:
    """Per-seed alignment loss, harm rate, and benign accuracy / over-refusal.

    One compiled program per (language, model) for every stage's evaluation.
    """
    out = _evaluate(bed.lang, bed.apply_fn, params, bed.harm_eval, bed.benign_eval)
    return {k: np.asarray(v) for k, v in out.items()}


def stacked_tasks(bed: Testbed) -> tuple[Batch, Batch]:
    """Training and evaluation data of every fine-tuning task, stacked on a leading task axis."""
    tasks = bed.config.finetune_tasks
    train_data = jax.tree.map(lambda *xs: jnp.stack(xs), *[bed.task_train[t] for t in tasks])
    eval_data = jax.tree.map(lambda *xs: jnp.stack(xs), *[bed.task_eval[t] for t in tasks])
    return train_data, eval_data


def _over_tasks_and_seeds(fn, train_data: Batch, eval_data: Batch, *per_seed):
    """Run `fn(*per_seed_i, train_t, eval_t)` for every task t (outer) and seed i (inner)
    as one compiled program; per-seed arrays are arguments, not baked-in constants."""

    def per_task(td, ed, *seeded):
        return jax.vmap(lambda *args: fn(*args, td, ed))(*seeded)

    in_axes = (0, 0) + (None,) * len(per_seed)
    return jax.jit(jax.vmap(per_task, in_axes=in_axes))(train_data, eval_data, *per_seed)


def finetune(bed: Testbed, params: PyTree, basis: Array, curvature: Array, *, lr: float, steps: int,
             records: int) -> Trajectory:
    """Full fine-tuning by full-batch gradient descent on every task and seed.

    Args:
        params: aligned params with a leading seed axis.
        basis: `(seed, k, d)` orthonormal rows spanning S at each seed's aligned model.
        curvature: `(seed, k)` the alignment operator's eigenvalues on S.
        lr, steps, records: learning rate, number of steps, log-spaced records.

    Returns:
        A `Trajectory` whose arrays have leading axes `(task, seed)`; it records
        `Delta L_A`, `L_F`, `||P_S delta||`, `||delta||`, and in `extra` the harm
        rate, the task's held-out accuracy, and the S-part of the alignment loss
        `s_quadratic = (1/2) sum_i lambda_i (u_i . delta)^2`.
    """
    rec = log_record_steps(steps, records)

    def one(theta0, s, lam, train_data, eval_data):
        land = FunctionLandscape(
            theta0=theta0, align_fn=bed.align_loss,
            task_fn=lambda p: answer_loss(bed.apply_fn, p, train_data),
        )

        def extra(delta):
            p = jax.tree.map(jnp.add, theta0, delta)
            coords = s @ ravel_pytree(delta)[0]
            return dict(
                harm_rate=harm_rate(bed.lang, bed.apply_fn, p, bed.harm_eval),
                task_accuracy=answer_accuracy(bed.apply_fn, p, eval_data),
                s_quadratic=0.5 * jnp.sum(lam * coords**2),
            )

        return descend(land, optax.sgd(lr), rec, lr, s, extra=extra)

    return _over_tasks_and_seeds(one, *stacked_tasks(bed), params, basis, curvature)


def finetune_lora(bed: Testbed, params: PyTree, basis: Array, curvature: Array, *, lr: float, steps: int,
                  records: int) -> Trajectory:
    """LoRA fine-tuning (rank `config.lora_rank` on every block matrix), every task and seed.

    The optimizer moves only the adapter; `extra` holds the harm rate, task
    accuracy, and `||P_S delta||`, `||delta||` of the merged full-parameter
    displacement, which compare directly with full fine-tuning.
    """
    rec = log_record_steps(steps, records)
    rank, targets = bed.config.lora_rank, MODELS[bed.config.model].lora_targets

    def one(base, s, lam, key, train_data, eval_data):
        adapter0 = lora_init(base, rank, key, targets)
        flat_base = ravel_pytree(base)[0]
        land = FunctionLandscape(
            theta0=adapter0,
            align_fn=lambda a: bed.align_loss(lora_merge(base, a, targets)),
            task_fn=lambda a: answer_loss(bed.apply_fn, lora_merge(base, a, targets), train_data),
        )

        def extra(delta):
            p = lora_merge(base, jax.tree.map(jnp.add, adapter0, delta), targets)
            full = ravel_pytree(p)[0] - flat_base
            coords = s @ full
            return dict(
                harm_rate=harm_rate(bed.lang, bed.apply_fn, p, bed.harm_eval),
                task_accuracy=answer_accuracy(bed.apply_fn, p, eval_data),
                s_quadratic=0.5 * jnp.sum(lam * coords**2),
                full_subspace_norm=jnp.linalg.norm(coords),
                full_delta_norm=jnp.linalg.norm(full),
            )

        return descend(land, optax.sgd(lr), rec, lr, None, extra=extra)

    return _over_tasks_and_seeds(one, *stacked_tasks(bed), params, basis, curvature, bed.seed_keys(Stream.LORA))

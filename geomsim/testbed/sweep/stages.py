"""The sweep's models: pretrained, aligned at each sharpness level, polished.

* pretrain: the testbed's pretraining (copy / reverse / increment, harmful
  requests answered), float32, every seed as one program;
* align: calibrated alignment per sharpness level sigma: harmful requests ->
  `p(REFUSE) = 1 - sigma` (binary KL, `tasks.calibrated_answer_loss`), benign
  requests answered as before; every (level, seed) as one program, on the same
  batches for every level (the levels differ only in their target);
* polish: Gauss-Newton to the nearest point where every prompt of the fixed
  alignment set is refused with probability exactly 1 - sigma and the answers
  of a fixed benign set are held (`testbed.polish`), float64: a stationary point
  of `L_A` (||grad L_A|| ~ 1e-15);
* measure: L_A, ||grad L_A||, harm rate, benign accuracy and the top eigenpairs
  of `H_A` (Lanczos) of any set of models; S is the span of the top `rank`.

Arrays carry leading `(level, seed)` axes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PyTree

from geomsim.curvature import eigsh, hessian_operator
from geomsim.tasks import (
    PRETRAIN_TASKS,
    Batch,
    answer_accuracy,
    answer_log_odds,
    calibrated_answer_loss,
    concat,
    harm_rate,
    make_batch,
    mixture,
    refusal_kl,
    refusal_log_odds,
)
from geomsim.testbed import stages as testbed_stages
from geomsim.testbed.config import TestbedConfig, shared_part
from geomsim.testbed.polish import gauss_newton
from geomsim.testbed.streams import Stream
from geomsim.testbed.sweep.config import TestbedSweepConfig

# The polish stops when the constraint residuals (log-odds, summed in quadrature) reach
# this: round-off level, where ||grad L_A|| is ~1e-16.
POLISH_TOL = 1e-12


@dataclass(frozen=True)
class SweepData:
    """Everything derived from the config: the testbed (language, model, eval sets) and the sweep's data.

    align_prompts `(A, P)`: harmful prompts (up to SEP) defining `L_A`.
    hold: `Batch` of benign examples whose answers the polish holds.
    task_train: `{base, other}` -> `Batch` with a leading seed axis `(seeds, n, T)`.
    task_eval: `{base, other}` -> held-out `Batch` `(eval_size, T)`.
    """

    config: TestbedSweepConfig
    bed: testbed_stages.Testbed
    align_prompts: Int[Array, "A P"]
    hold: Batch
    task_train: dict[str, Batch]
    task_eval: dict[str, Batch]

    @property
    def lang(self):
        return self.bed.lang

    @property
    def apply_fn(self):
        return self.bed.apply_fn

    def key(self, stream: int, *more: int | Int[Array, ""]):
        return self.bed.key(stream, *more)

    def align_loss(self, params: PyTree, target: float | Array) -> Float[Array, ""]:
        """`L_A`: calibrated refusal loss on the fixed alignment set (nats)."""
        return refusal_kl(self.apply_fn, params, self.align_prompts, target)


def testbed_config(config: TestbedSweepConfig) -> TestbedConfig:
    """The testbed config sharing the sweep's language, model and pretraining (its checkpoints too)."""
    return TestbedConfig(**shared_part(config), finetune_tasks=(config.task_base, config.task_other),
                         finetune_size=config.task_size)


def build(config: TestbedSweepConfig) -> SweepData:
    bed = testbed_stages.build(testbed_config(config))
    # One program for the sweep's sets, as for the testbed's (`testbed.stages.build`).
    prompts, hold, task_train, task_eval = jax.jit(functools.partial(_datasets, config, bed))()
    return SweepData(config, bed, prompts, hold, task_train, task_eval)


def _datasets(config: TestbedSweepConfig, bed: testbed_stages.Testbed):
    """`build`'s alignment prompts, held benign set and per-role task sets (see `SweepData`)."""
    lang = bed.lang
    per = -(-config.align_set // len(PRETRAIN_TASKS))
    harmful = concat([make_batch(lang, t, bed.key(Stream.SWEEP_ALIGN_SET, i), per, harmful=True)
                      for i, t in enumerate(PRETRAIN_TASKS)])
    prompts = harmful.tokens[: config.align_set, : lang.answer_start]
    hold = mixture(lang, PRETRAIN_TASKS, bed.key(Stream.SWEEP_HOLD_SET), config.hold_set)
    task_train, task_eval = {}, {}
    for role, task in (("base", config.task_base), ("other", config.task_other)):
        index = 0 if role == "base" else 1
        task_train[role] = jax.vmap(lambda k, task=task: make_batch(lang, task, k, config.task_size))(
            jax.vmap(lambda s, index=index: bed.key(Stream.SWEEP_TASK_TRAIN, index, s))(jnp.arange(config.seeds)))
        task_eval[role] = make_batch(lang, task, bed.key(Stream.SWEEP_TASK_EVAL, index), config.eval_size)
    return prompts, hold, task_train, task_eval


def targets(config: TestbedSweepConfig, dtype=float) -> np.ndarray:
    """Target refusal probability `1 - sigma` per sharpness level."""
    return 1.0 - np.asarray(config.refusal_sigma, dtype=dtype)


def align_levels(data: SweepData, pretrained: PyTree) -> tuple[PyTree, Array]:
    """Calibrated alignment of every seed's pretrained model at every level: `(level, seed, ...)` params."""
    cfg = data.config
    keys = data.bed.seed_keys(Stream.ALIGN)

    def one(params, key, target):
        return testbed_stages.train_mixture(
            data.lang, params, key, loss=lambda p, b: calibrated_answer_loss(data.apply_fn, p, b, target),
            steps=cfg.align_steps, lr=cfg.align_lr, batch=cfg.batch, harmful_fraction=cfg.align_harmful_fraction,
            aligned=True)

    per_level = jax.vmap(one, in_axes=(0, 0, None))
    tgt = jnp.asarray(targets(cfg), jax.tree.leaves(pretrained)[0].dtype)
    return jax.jit(jax.vmap(per_level, in_axes=(None, None, 0)))(pretrained, keys, tgt)


def polish(data: SweepData, aligned: PyTree) -> tuple[PyTree, Array]:
    """Gauss-Newton polish of every `(level, seed)` model (float64 in, float64 out).

    Returns the polished params and the residual norms `(level, seed, polish_steps)`
    (nan after convergence).
    """
    cfg, lang, apply_fn = data.config, data.lang, data.apply_fn
    mask = data.hold.answer_mask[:, lang.answer_start:]

    def one(params, target):
        star = jnp.log(target) - jnp.log1p(-target)
        held = jax.vmap(lambda tok: answer_log_odds(lang, apply_fn, params, tok))(data.hold.tokens)

        def refusal(p, prompt):
            return refusal_log_odds(apply_fn, p, prompt[None])[0] - star

        def benign(p, example):
            tokens, m, ref = example
            return jnp.where(m, answer_log_odds(lang, apply_fn, p, tokens) - ref, 0.0)

        groups = [(refusal, data.align_prompts), (benign, (data.hold.tokens, mask, held))]
        return gauss_newton(groups, params, cfg.polish_steps, tol=POLISH_TOL)

    levels, seeds = cfg.grid_shape[0], cfg.seeds
    flat = jax.tree.map(lambda x: x.reshape(levels * seeds, *x.shape[2:]), aligned)
    tgt = jnp.repeat(jnp.asarray(targets(cfg)), seeds)
    # One model at a time: the (constraints x parameters) Jacobian of every model at once would not fit.
    out, norms = jax.jit(lambda ps, ts: jax.lax.map(lambda a: one(*a), (ps, ts)))(flat, tgt)
    unflat = jax.tree.map(lambda x: x.reshape(levels, seeds, *x.shape[1:]), out)
    return unflat, norms.reshape(levels, seeds, -1)


def measure_models(data: SweepData, params: PyTree, target: Array) -> dict[str, Array]:
    """Per model (leading axis `m` of `params` and `target`): L_A, ||grad L_A||, the harm
    rate and benign accuracy (held-out), and the top `num_eigs` eigenpairs of `H_A`
    (Lanczos, relative residual 1e-8): eigenvalues `(m, n)` descending,
    eigenvectors `(m, n, d)`, residuals `(m, n)`."""
    bed, cfg = data.bed, data.config

    def one(p, t, key):
        loss, grad = jax.value_and_grad(data.align_loss)(p, t)
        eig = eigsh(cfg.num_eigs, tol=1e-8)(hessian_operator(lambda q: data.align_loss(q, t), p), key)
        return dict(
            align_loss=loss,
            align_grad_norm=jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grad))),
            harm_rate=harm_rate(bed.lang, bed.apply_fn, p, bed.harm_eval),
            benign_accuracy=answer_accuracy(bed.apply_fn, p, bed.benign_eval),
            eigenvalues=eig.eigenvalues, eigenvectors=eig.eigenvectors, residuals=eig.residuals,
        )

    keys = jax.vmap(lambda i: data.key(Stream.SWEEP_SPECTRUM, i))(jnp.arange(target.shape[0]))
    # Batches of 8 models: all 32 at once need ~3.5 GB of buffers for the Lanczos products.
    return jax.jit(lambda *a: jax.lax.map(lambda x: one(*x), a, batch_size=8))(params, target, keys)

"""Minibatch gradient descent's forecast (`--optimizer gd --minibatch`) against measured
minibatch SGD, and what the model's dropped cross term costs (issue 19, item 2).

    python benchmarks/minibatch_noise.py [--runs 256] [--steps 400]

On the examples' 4-batch classifier (68 parameters) and a wider one defined here (two hidden
layers of 32, 1316 parameters, 8 task batches, another labelling rule), so the dense Hessian
of `L_A` is cheap, per learning rate and threshold:
- *measured*: `--runs` minibatch SGD runs, one task batch drawn at random per step (fixed
  key), their first crossings' 5% quantile and median (steps);
- *quadratic noise model, same draws*: the exact full-batch GD path plus the noise term of
  geomsim.theory.minibatch, `Q(dev)`, on the measured runs' own draw sequences, with and
  without the cross term `delta_mean^T H_A e_n` that the library drops (its mean over draws
  is 0);
- *diagnosis*: `python -m geomsim.diagnose ... --optimizer gd --minibatch`'s `quadratic_gd`
  crossing (where 5% of 1000 simulated draw sequences cross) and its mean path's crossing
  (the full-batch forecast), each with the fraction of measured runs that crossed earlier
  (the forecast was late for them) and more than 2x earlier.
Writes benchmarks/results/minibatch_noise.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from geomsim.diagnose import AlignedModel  # noqa: E402
from geomsim.diagnose.cli import main as diagnose  # noqa: E402
from geomsim.diagnose.examples import tiny_classifier  # noqa: E402
from geomsim.io import environment_versions, loads_strict, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [(0.01, 1e-2), (0.05, 1e-2), (0.05, 1e-1), (0.2, 1e-1)]


def wider_classifier():
    """3 -> 32 -> 32 -> 4 tanh MLP; L_A keeps its own answers on 64 inputs, L_F a new rule
    (class = sign pattern of x2 and x0 + x1) on 64 inputs in 8 batches of 8."""
    net = eqx.nn.MLP(3, 4, 32, 2, activation=jnp.tanh, key=jax.random.key(11))
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def apply_fn(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    xa = jax.random.normal(jax.random.key(12), (64, 3))
    xf = jax.random.normal(jax.random.key(13), (64, 3))
    yf = (xf[:, 2] > 0).astype(jnp.int32) + 2 * (xf[:, 0] + xf[:, 1] > 0).astype(jnp.int32)
    align = (xa, jnp.argmax(apply_fn(params, xa), axis=-1))
    return AlignedModel(params, apply_fn, align_batches=align,
                        task_batches=[(xf[i:i + 8], yf[i:i + 8]) for i in range(0, 64, 8)])


MODELS = {"tiny_classifier": ("geomsim.diagnose.examples:tiny_classifier", tiny_classifier),
          "wider_classifier": ("minibatch_noise:wider_classifier", wider_classifier)}


def crossings(curves: np.ndarray, threshold: float) -> np.ndarray:
    """First step at or above the threshold per run (inf: never)."""
    hit = curves >= threshold
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1.0, np.inf)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    rows = []
    for name, (spec, factory) in MODELS.items():
        rows += measure(name, spec, factory(), args)
    write_json(ROOT / "benchmarks" / "results" / "minibatch_noise.json",
               {"command": "python benchmarks/minibatch_noise.py", "runs": args.runs, "steps": args.steps,
                "rows": rows, "versions": environment_versions()})


def measure(name: str, spec: str, model, args) -> list[dict]:
    """Every setting on one model (the module docstring)."""
    flat0, unravel = ravel_pytree(model.params)
    data, weights = model.task_batches.data, np.asarray(model.task_batches.weights)
    count = weights.shape[0]

    def align(x):
        return model.align_loss(unravel(x))

    a0, align_grad, hess = align(flat0), jax.grad(align)(flat0), jax.hessian(align)(flat0)

    def batch_grad(x, i):
        return jax.grad(lambda y: model.batch_loss(unravel(y), jax.tree.map(lambda d: d[i], data)))(x)

    grads = jax.vmap(lambda i: batch_grad(flat0, i))(jnp.arange(count))
    xi = grads - jnp.asarray(weights) @ grads

    @jax.jit
    def sgd(order, lr):
        def step(x, i):
            x = x - lr * batch_grad(x, i)
            return x, align(x) - a0
        return jax.lax.scan(step, flat0, order)[1]

    @jax.jit
    def full_gd(lr):
        def step(x, _):
            x = x - lr * jax.grad(lambda y: model.task_loss(unravel(y)))(x)
            return x, (align(x) - a0, x - flat0)
        return jax.lax.scan(step, flat0, None, length=args.steps)[1]

    orders = jax.random.choice(jax.random.key(5), count, (args.runs, args.steps), p=jnp.asarray(weights))
    dev = jnp.cumsum(jax.nn.one_hot(orders, count), axis=1) - jnp.arange(1, args.steps + 1)[None, :, None] * weights
    rows = []
    for lr, threshold in SETTINGS:
        start = time.perf_counter()
        measured = np.asarray(jax.vmap(sgd, (0, None))(orders, lr))
        mean_curve, mean_path = full_gd(lr)
        e = -lr * dev @ xi  # (runs, steps, d)
        noise = e @ align_grad + 0.5 * jnp.einsum("rsd,de,rse->rs", e, hess, e)
        cross = jnp.einsum("sd,de,rse->rs", mean_path, hess, e)
        model_curves = {"with_cross_term": np.asarray(mean_curve[None] + noise + cross),
                        "without_cross_term": np.asarray(mean_curve[None] + noise)}
        with tempfile.TemporaryDirectory() as out:
            assert diagnose(["--model", spec, "--rank", "2", "--optimizer",
                             "gd", "--lr", str(lr), "--threshold", str(threshold), "--minibatch", "--figures", "none",
                             "--defenses", "none", "--out", out, "--quiet"]) == 0
            report = loads_strict((Path(out) / "report.json").read_text())
        first = crossings(measured, threshold)
        row = {"model": name, "parameters": int(flat0.shape[0]), "batches": int(count), "lr": lr,
               "threshold": threshold, "runs": args.runs,
               "measured_q05": float(np.quantile(first, 0.05)), "measured_median": float(np.median(first))}
        for variant, curves in model_curves.items():
            mine = crossings(curves, threshold)
            row[f"model_{variant}_q05"] = float(np.quantile(mine, 0.05))
            row[f"model_{variant}_median"] = float(np.median(mine))
            row[f"model_{variant}_same_step_fraction"] = float(np.mean(mine == first))
        forecast = report["t_fail"]["quadratic_gd"] / lr
        mean = report["minibatch"]["t_fail_mean_path"]["quadratic_gd"] / lr
        for which, steps in (("forecast", forecast), ("mean_path", mean)):
            row.update({f"{which}_steps": steps, f"{which}_late_fraction": float(np.mean(first < steps)),
                        f"{which}_late_2x_fraction": float(np.mean(first < steps / 2))})
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()

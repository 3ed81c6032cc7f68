"""Likelihoods for Fisher operators: per-sample NLL, sampling, output-space Fisher.

A likelihood maps model outputs to a distribution over targets.  The leading
axes of the outputs index samples; the trailing `event_ndim` axes are the
output of one sample (logits of one token, the mean vector of one regression
target).  The Fisher information of the model is `J^T F_out J` averaged over
samples, where `F_out = E_y[grad_o log p(y|o) grad_o log p(y|o)^T]` is
available in closed form for these families.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class Likelihood(eqx.Module):
    """Conditional distribution `p(y | outputs)` over per-sample targets."""

    @abc.abstractmethod
    def nll(self, outputs: Array, targets: Array) -> Array:
        """Per-sample negative log-likelihood (nats), shape = sample axes."""

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, outputs: Array, num: int) -> Array:
        """`num` target draws per sample from `p(y | outputs)`: shape `(num, *targets_shape)`."""

    @abc.abstractmethod
    def output_fisher_mv(self, outputs: Array, u: Array) -> Array:
        """`F_out u` per sample (same shape as `outputs`)."""

    @abc.abstractmethod
    def output_fisher_dense(self, outputs: Array) -> Array:
        """Per-sample `F_out` as `(*sample_axes, event, event)` (flattened event)."""

    def num_samples(self, outputs: Array) -> int:
        """Number of samples (product of the sample axes)."""
        return int(outputs.size // outputs.shape[-1])


class Categorical(Likelihood):
    """Softmax over the last axis of `outputs` (logits); targets are int class ids.

    `F_out = diag(p) - p p^T` with `p = softmax(logits)`: the Fisher equals the
    GGN of the cross-entropy loss.
    """

    def nll(self, outputs, targets):
        logp = jax.nn.log_softmax(outputs, axis=-1)
        return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]

    def sample(self, key, outputs, num):
        return jax.random.categorical(key, outputs, axis=-1, shape=(num, *outputs.shape[:-1]))

    def output_fisher_mv(self, outputs, u):
        p = jax.nn.softmax(outputs, axis=-1)
        return p * u - p * jnp.sum(p * u, axis=-1, keepdims=True)

    def output_fisher_dense(self, outputs):
        p = jax.nn.softmax(outputs, axis=-1)
        return jax.vmap(jnp.diag)(p.reshape(-1, p.shape[-1])).reshape(*p.shape, p.shape[-1]) - \
            p[..., :, None] * p[..., None, :]


class Gaussian(Likelihood):
    """`y ~ N(outputs, sigma^2 I)` over the last axis; `F_out = I / sigma^2`.

    sigma: the fixed noise scale (target units), > 0.
    """

    sigma: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if not self.sigma > 0:
            raise ValueError(f"sigma: must be > 0 (got {self.sigma})")

    def nll(self, outputs, targets):
        # Up to the constant (D/2) log(2 pi sigma^2), which has no curvature.
        return 0.5 * jnp.sum((outputs - targets) ** 2, axis=-1) / self.sigma**2

    def sample(self, key, outputs, num):
        return outputs + self.sigma * jax.random.normal(key, (num, *outputs.shape), outputs.dtype)

    def output_fisher_mv(self, outputs, u):  # noqa: ARG002  (the interface; constant for a Gaussian)
        return u / self.sigma**2

    def output_fisher_dense(self, outputs):
        eye = jnp.eye(outputs.shape[-1], dtype=outputs.dtype) / self.sigma**2
        return jnp.broadcast_to(eye, (*outputs.shape, outputs.shape[-1]))


def resolve_likelihood(likelihood: str | Likelihood) -> Likelihood:
    """`"categorical"`, `"gaussian"` or a `Likelihood` instance."""
    if isinstance(likelihood, Likelihood):
        return likelihood
    table = {"categorical": Categorical, "gaussian": Gaussian}
    if likelihood not in table:
        raise ValueError(f"likelihood: must be one of {sorted(table)} or a Likelihood (got {likelihood!r})")
    return table[likelihood]()


def per_sample_output_grads(per_sample_loss, outputs: Float[Array, "..."], targets: Array) -> Array:
    """`grad_o l_i(o_i)` for every sample i, stacked like `outputs`.

    Each sample's loss depends only on its own output slice, so the gradient of
    the summed loss holds every per-sample gradient at once.
    """
    return jax.grad(lambda o: jnp.sum(per_sample_loss(o, targets)))(outputs)

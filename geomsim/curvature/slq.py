"""Stochastic Lanczos quadrature (SLQ): the spectral density of an operator.

For a probe v (Rademacher, normalised), m Lanczos steps give a Gauss
quadrature `v^T f(A) v ~= sum_j w_j f(theta_j)` exact for polynomials f of
degree < 2m; averaging over probes estimates `tr f(A) / d` without bias.
The nodes theta and weights w of every probe make the density
`phi(t) = mean_probes sum_j w_j delta(t - theta_j)`, smoothed with a Gaussian
for plotting (Ghorbani et al. 2019; Yao et al. 2020, PyHessian).  The Krylov
step is `matfree.decomp.tridiag_sym` with full reorthogonalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from matfree import decomp

from geomsim.curvature._problem import flat_problem


class SpectralDensity(eqx.Module):
    """Quadrature nodes and weights of every probe.

    nodes: `(P, m)` Ritz values per probe (units of the operator).
    weights: `(P, m)` Gauss weights per probe (each row sums to 1).
    dim: d, the operator size (static).
    """

    nodes: Float[Array, "P m"]
    weights: Float[Array, "P m"]
    dim: int = eqx.field(static=True)

    def expectation(self, fn: Callable[[Array], Array]) -> tuple[Array, Array]:
        """`tr fn(A) / d` estimate and its standard error over probes."""
        per_probe = jnp.sum(self.weights * fn(self.nodes), axis=-1)
        n = per_probe.shape[0]
        return jnp.mean(per_probe), jnp.std(per_probe, ddof=1 if n > 1 else 0) / jnp.sqrt(n)

    def moment(self, power: int) -> tuple[Array, Array]:
        """`tr(A^power) / d` estimate and standard error."""
        return self.expectation(lambda x: x**power)

    def density(self, grid: Float[ArrayLike, " n"], sigma: float | None = None) -> Float[Array, " n"]:
        """Gaussian-smoothed density on `grid` (integrates to ~1 over the spectrum).

        sigma: kernel width (units of the operator); default 1% of the node range.
        """
        grid = jnp.asarray(grid)
        if sigma is None:
            sigma = 0.01 * (jnp.max(self.nodes) - jnp.min(self.nodes)) + jnp.finfo(self.nodes.dtype).tiny
        z = (grid[:, None, None] - self.nodes[None]) / sigma
        kernel = jnp.exp(-0.5 * z**2) / (sigma * jnp.sqrt(2 * jnp.pi))
        return jnp.mean(jnp.sum(self.weights[None] * kernel, axis=-1), axis=-1)


def spectral_density(num_probes: int, num_matvecs: int, *, like: Any = None) -> Callable[..., SpectralDensity]:
    """Build `slq(matvec, key, *params) -> SpectralDensity`.

    Args:
        num_probes: P >= 1 Rademacher probes (vmapped; cost P * num_matvecs products).
        num_matvecs: Lanczos depth m, 1 <= m <= d (moments up to order 2m - 1 are exact per probe).
        like: the vector space for a plain matvec (see `flat_problem`).
    """
    if num_probes < 1:
        raise ValueError(f"num_probes: must be an integer >= 1 (got {num_probes})")
    if num_matvecs < 1:
        raise ValueError(f"num_matvecs: must be an integer >= 1 (got {num_matvecs})")

    def slq(matvec, key: PRNGKeyArray, *params) -> SpectralDensity:
        prob = flat_problem(matvec, params, like, "spectral_density")
        if num_matvecs > prob.dim:
            raise ValueError(f"num_matvecs: must be <= d = {prob.dim} (got {num_matvecs})")
        tridiag = decomp.tridiag_sym(num_matvecs, reortho="full", materialize=True, custom_vjp=False)
        probes = jax.random.rademacher(key, (num_probes, prob.dim), prob.dtype)

        def one(v):
            _, t_small, *_ = tridiag(lambda x: prob.matvec(x), v)
            theta, s = jnp.linalg.eigh(t_small)
            return theta, s[0] ** 2

        nodes, weights = jax.vmap(one)(probes)
        return SpectralDensity(nodes=nodes, weights=weights, dim=prob.dim)

    return slq

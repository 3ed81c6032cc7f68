"""Curvature engine: matrix-free Hessian / GGN / Fisher operators and the
Krylov and stochastic algorithms on them, jit-compiled and vmappable.

Operators (pytrees carrying `psd` / `symmetric` tags; `.mv` on pytrees,
`.mv_flat` on flat vectors, `.linearize()` to hoist the forward pass):
    hessian_operator, ggn_operator, fisher_operator, empirical_fisher_operator,
    mc_fisher_operator, chunked_ggn_operator (a language model's GGN / Fisher, its
    head applied to chunks of positions), MatrixOperator; likelihoods Categorical, Gaussian.
Dense ground truth (small models): dense_hessian, dense_ggn, dense_fisher,
    dense_empirical_fisher, dense_operator_fisher.
Algorithms (factories of pure `(matvec, key, *params) -> result` functions):
    eigsh (thick-restart Lanczos), power_iteration, spectral_density (SLQ),
    trace_estimator / hutchinson / xtrace / xnystrace, diagonal_estimator,
    track_eigenspace (warm-started re-solves along a path).
Subspaces: project, overlap_score, subspace_overlap, gap_rank.
Devices: device_mesh, shard_operator (batch split over "data", parameters
    FSDP-style over "model"; every algorithm above runs unchanged on the result).

Example:
    >>> op = hessian_operator(loss, params, batches)
    >>> top = jax.jit(eigsh(20, tol=1e-4))(op, jax.random.key(0))
    >>> top.eigenvalues, top.residuals, top.num_matvecs
"""

from geomsim.curvature.batches import BatchSet, Stacked, as_batches
from geomsim.curvature.dense import (
    dense_empirical_fisher,
    dense_fisher,
    dense_ggn,
    dense_hessian,
    dense_operator_fisher,
)
from geomsim.curvature.lanczos import EigResult, default_krylov_dim, eigsh
from geomsim.curvature.likelihoods import Categorical, Gaussian, Likelihood
from geomsim.curvature.operators import (
    ChunkedGGNOperator,
    CurvatureOperator,
    EmpiricalFisherOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    LinearizedOperator,
    MatrixOperator,
    chunked_ggn_operator,
    empirical_fisher_operator,
    fisher_operator,
    ggn_operator,
    hessian_operator,
    mc_fisher_operator,
    operator_matvec,
)
from geomsim.curvature.power import power_iteration
from geomsim.curvature.sharding import batch_sharding, device_mesh, param_sharding, shard_batches, shard_operator
from geomsim.curvature.slq import SpectralDensity, spectral_density
from geomsim.curvature.subspace import gap_rank, overlap_score, project, subspace_overlap
from geomsim.curvature.trace import (
    DiagonalEstimate,
    TraceEstimate,
    diagonal_estimator,
    hutchinson,
    trace_estimator,
    xnystrace,
    xtrace,
)
from geomsim.curvature.tracking import EigenTrack, track_eigenspace

__all__ = [
    "batch_sharding",
    "device_mesh",
    "param_sharding",
    "shard_batches",
    "shard_operator",
    "BatchSet",
    "Categorical",
    "ChunkedGGNOperator",
    "CurvatureOperator",
    "DiagonalEstimate",
    "EigResult",
    "EigenTrack",
    "EmpiricalFisherOperator",
    "FisherOperator",
    "GGNOperator",
    "Gaussian",
    "HessianOperator",
    "Likelihood",
    "LinearizedOperator",
    "MatrixOperator",
    "SpectralDensity",
    "Stacked",
    "TraceEstimate",
    "as_batches",
    "chunked_ggn_operator",
    "default_krylov_dim",
    "dense_empirical_fisher",
    "dense_fisher",
    "dense_ggn",
    "dense_hessian",
    "dense_operator_fisher",
    "diagonal_estimator",
    "eigsh",
    "empirical_fisher_operator",
    "fisher_operator",
    "gap_rank",
    "ggn_operator",
    "hessian_operator",
    "hutchinson",
    "mc_fisher_operator",
    "operator_matvec",
    "overlap_score",
    "power_iteration",
    "project",
    "spectral_density",
    "subspace_overlap",
    "trace_estimator",
    "track_eigenspace",
    "xnystrace",
    "xtrace",
]

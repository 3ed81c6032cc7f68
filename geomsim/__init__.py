"""geomsim: simulate and verify the geometry of alignment collapse (JAX).

Subpackages mirror the architecture: `landscapes` (aligned point + losses),
`dynamics` (optimizers, gradient flow), `curvature` (matrix-free operators and
spectra), `theory` (Taylor coefficients, laws, AIC, forecasts), `fitting`
(onset power laws), `defenses` (optax transformations), `sweep` (grids and the
CLI), `diagnose` (the forecast CLI), `testbed` (the transformer), `models`
(equinox models; `models.hf`: Hugging Face checkpoints, tokenizers, JSONL data),
`tasks` (the synthetic language), `plotting`, `io`, `processes` (several
processes, one job: `jax.distributed`), `chunking` (rows in fixed-size chunks).
"""

from geomsim._runtime import configure_runtime

configure_runtime()

from geomsim import defenses, dynamics, fitting, io, landscapes, theory  # noqa: E402
from geomsim.dynamics import Trajectory, descend, gradient_flow, make_optimizer  # noqa: E402
from geomsim.fitting import PowerLawFit, fit_onset, local_slopes  # noqa: E402
from geomsim.landscapes import FunctionLandscape, Landscape, QuadraticCubic, quadratic_cubic  # noqa: E402
from geomsim.theory import align_coefficients, dense_aic, path_coefficients  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "FunctionLandscape",
    "Landscape",
    "PowerLawFit",
    "QuadraticCubic",
    "Trajectory",
    "align_coefficients",
    "defenses",
    "dense_aic",
    "descend",
    "dynamics",
    "fit_onset",
    "fitting",
    "gradient_flow",
    "io",
    "landscapes",
    "local_slopes",
    "make_optimizer",
    "path_coefficients",
    "quadratic_cubic",
    "theory",
]

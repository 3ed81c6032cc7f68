"""geomsim: simulate and verify the geometry of alignment collapse (JAX).

Subpackages mirror the architecture: `landscapes` (aligned point + losses),
`dynamics` (optimizers, gradient flow), `curvature` (matrix-free operators and
spectra), `theory` (Taylor coefficients, laws, AIC, forecasts), `fitting`
(onset power laws), `defenses` (optax transformations), `sweep` (grids and the
CLI), `diagnose` (the forecast CLI), `testbed` (the transformer), `models`
(equinox models; `models.hf`: Hugging Face checkpoints, tokenizers, JSONL data),
`tasks` (the synthetic language), `plotting`, `io`, `processes` (several
processes, one job: `jax.distributed`), `chunking` (rows in fixed-size chunks);
modules `config` (typed settings from flags and TOML), `watchdog` (a stalled
chunk becomes a one-line error) and `finite` (non-finite inputs named, never a
verdict).
"""

from geomsim._runtime import configure_runtime

configure_runtime()

# The names below are loaded on first use (PEP 562): `import geomsim` alone costs jax's import
# and no more, so a command line imports only what it runs (diffrax and the defenses are
# ~0.65 s of the 2.5 s a diagnosis spent importing geomsim; benchmarks/RESULTS.md).
_SUBPACKAGES = ("defenses", "dynamics", "fitting", "io", "landscapes", "theory")
_NAMES = {
    "Trajectory": "geomsim.dynamics", "descend": "geomsim.dynamics", "gradient_flow": "geomsim.dynamics",
    "make_optimizer": "geomsim.dynamics",
    "PowerLawFit": "geomsim.fitting", "fit_onset": "geomsim.fitting", "local_slopes": "geomsim.fitting",
    "FunctionLandscape": "geomsim.landscapes", "Landscape": "geomsim.landscapes",
    "QuadraticCubic": "geomsim.landscapes", "quadratic_cubic": "geomsim.landscapes",
    "align_coefficients": "geomsim.theory", "dense_aic": "geomsim.theory", "path_coefficients": "geomsim.theory",
}


def __getattr__(name: str):
    import importlib

    if name in _SUBPACKAGES:
        return importlib.import_module(f"geomsim.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'geomsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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

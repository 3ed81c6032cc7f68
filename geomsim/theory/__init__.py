"""Theory: Taylor coefficients along gradient flow, closed-form laws, dense AIC, forecasts."""

from geomsim.theory.aic import aic_factory
from geomsim.theory.aic_dense import DenseAIC, dense_aic, dense_matrices
from geomsim.theory.forecast import (
    LocalModels,
    alignment_risk,
    forecast_errors,
    landscape_local_models,
    local_models,
    paper_bound,
    quadratic_flow,
    quadratic_gd,
    time_to_failure,
)
from geomsim.theory.laws import (
    crossover_time,
    discrete_gd_quartic,
    falling_factorial_basis,
    first_crossing,
    polynomial_value,
    quadratic_prefactor,
    quartic_law,
    quartic_prefactor,
    quartic_time_to_failure,
    sextic_prefactor,
    time_to_threshold,
    window_end,
)
from geomsim.theory.taylor import align_coefficients, path_coefficients

__all__ = [
    "DenseAIC",
    "LocalModels",
    "alignment_risk",
    "forecast_errors",
    "landscape_local_models",
    "local_models",
    "paper_bound",
    "quadratic_flow",
    "quadratic_gd",
    "time_to_failure",
    "aic_factory",
    "align_coefficients",
    "crossover_time",
    "dense_aic",
    "dense_matrices",
    "discrete_gd_quartic",
    "falling_factorial_basis",
    "first_crossing",
    "path_coefficients",
    "polynomial_value",
    "quadratic_prefactor",
    "quartic_law",
    "quartic_prefactor",
    "quartic_time_to_failure",
    "sextic_prefactor",
    "time_to_threshold",
    "window_end",
]

"""Measured power laws: local slopes, onset window, exponent and prefactor fits."""

from geomsim.fitting.powerlaw import (
    FIT_NO_PLATEAU,
    FIT_NO_SIGNAL,
    FIT_OK,
    FIT_REASONS,
    MAX_POWER,
    PowerLawFit,
    fit_onset,
    local_slopes,
)

__all__ = [
    "FIT_NO_PLATEAU",
    "FIT_NO_SIGNAL",
    "FIT_OK",
    "FIT_REASONS",
    "MAX_POWER",
    "PowerLawFit",
    "fit_onset",
    "local_slopes",
]

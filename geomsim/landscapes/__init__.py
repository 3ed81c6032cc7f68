"""Landscapes: an aligned starting point plus alignment and fine-tuning losses."""

from geomsim.landscapes.base import (
    FunctionLandscape,
    Landscape,
    dense_alignment_basis,
    flat_dim,
    flatten_displacement,
    subspace_basis,
)
from geomsim.landscapes.quadratic_cubic import QuadraticCubic, quadratic_cubic
from geomsim.landscapes.registry import available_landscapes, register_landscape, resolve_landscape
from geomsim.landscapes.tilt import TiltedLandscape, tilt_overlap

__all__ = [
    "FunctionLandscape",
    "Landscape",
    "QuadraticCubic",
    "TiltedLandscape",
    "available_landscapes",
    "dense_alignment_basis",
    "flat_dim",
    "flatten_displacement",
    "quadratic_cubic",
    "register_landscape",
    "resolve_landscape",
    "subspace_basis",
    "tilt_overlap",
]

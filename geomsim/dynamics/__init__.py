"""Training dynamics: discrete optimizers and gradient flow, recorded on log grids."""

from geomsim.dynamics.flow import exact_quadratic_flow, gradient_flow
from geomsim.dynamics.optimizers import OPTIMIZERS, make_optimizer
from geomsim.dynamics.trajectory import Trajectory, descend, log_record_steps, measure

__all__ = [
    "OPTIMIZERS",
    "Trajectory",
    "descend",
    "exact_quadratic_flow",
    "gradient_flow",
    "grid_flow",
    "log_record_steps",
    "make_optimizer",
    "measure",
    "ode_flow",
]


def __getattr__(name: str):
    # diffrax's two solvers load on first use (geomsim.dynamics.flow's docstring says why).
    if name in ("grid_flow", "ode_flow"):
        from geomsim.dynamics import ode

        return getattr(ode, name)
    raise AttributeError(f"module 'geomsim.dynamics' has no attribute {name!r}")

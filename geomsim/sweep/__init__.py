"""The sweep: sharpness x coupling grids, vmapped, resumable, with tidy outputs."""

from geomsim.sweep.config import ConfigError, SweepConfig, make_config, parse_values, validate
from geomsim.sweep.run import SweepResult, grid_axes, run_sweep

__all__ = ["ConfigError", "SweepConfig", "SweepResult", "grid_axes", "make_config", "parse_values", "run_sweep", "validate"]

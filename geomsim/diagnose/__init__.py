"""`python -m geomsim.diagnose`: the AIC and forecasts of alignment loss for a user's model."""

from geomsim.diagnose.config import DiagnoseConfig
from geomsim.diagnose.run import METHODS, diagnose, load_model

__all__ = ["METHODS", "DiagnoseConfig", "diagnose", "load_model"]

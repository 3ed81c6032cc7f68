"""`python -m geomsim.diagnose`: the AIC and forecasts of alignment loss for a user's model."""

from geomsim.diagnose.config import DiagnoseConfig
from geomsim.diagnose.model import AlignedModel
from geomsim.diagnose.run import METHODS, bounded_method, diagnose, load_model

__all__ = ["METHODS", "AlignedModel", "DiagnoseConfig", "bounded_method", "diagnose", "load_model"]

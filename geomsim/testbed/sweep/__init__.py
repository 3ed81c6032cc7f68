"""The transformer sharpness x coupling sweep: the quartic law on a real network, with its controls."""

from geomsim.testbed.sweep.config import ARMS, TestbedSweepConfig

__all__ = ["ARMS", "TestbedSweepConfig"]

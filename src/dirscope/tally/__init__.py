"""Streaming tallies: pure array code with no I/O and no model, mergeable exactly."""

from .reservoir import Reservoir
from .tally import NonFiniteValues, Tally, TallyResult

__all__ = ["NonFiniteValues", "Reservoir", "Tally", "TallyResult"]

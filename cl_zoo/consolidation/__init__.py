"""Consolidation penalties and their state, combinable with any method."""

from cl_zoo.consolidation.base import Consolidation, QuadraticConsolidation
from cl_zoo.consolidation.ewc import EWC
from cl_zoo.consolidation.importance import MAS, SI, SPP
from cl_zoo.consolidation.penalties import merge_quadratic, quadratic_penalty

__all__ = [
    "EWC",
    "MAS",
    "SI",
    "SPP",
    "Consolidation",
    "QuadraticConsolidation",
    "merge_quadratic",
    "quadratic_penalty",
]

"""Elastic weight consolidation, offline (`ewc`) and online (`online_ewc`).

The penalty and its Fisher live in `cl_zoo.consolidation.ewc`, so any method
can combine with them (`--consolidation=ewc`); these are the plain networks
with EWC switched on.
"""

from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register


@register("ewc")
class EWCModel(ContinualModel):
    """A network trained with EWC (Kirkpatrick et al., 2017)."""

    @classmethod
    def default_config(cls, benchmark):
        return {"head": "single", "consolidation": "ewc"}


@register("online_ewc")
class OnlineEWCModel(ContinualModel):
    """A network trained with online EWC (Schwarz et al., 2018)."""

    @classmethod
    def default_config(cls, benchmark):
        return {"head": "single", "consolidation": "online_ewc"}

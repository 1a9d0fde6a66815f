"""MAS: memory-aware synapses (Aljundi et al., 2018).

The output-sensitivity importance lives in `cl_zoo.consolidation`
(`--consolidation=mas` combines it with any method).
"""

from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register
from cl_zoo.methods.spp import protocol


@register("mas")
class MASModel(ContinualModel):
    """A network trained with memory-aware synapses."""

    @classmethod
    def default_config(cls, benchmark):
        return protocol(benchmark, consolidation="mas")

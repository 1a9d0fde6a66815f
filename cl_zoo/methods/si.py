"""SI: synaptic intelligence (Zenke et al., 2017).

The online path-integral importance lives in `cl_zoo.consolidation`
(`--consolidation=si` combines it with any method).
"""

from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register
from cl_zoo.methods.spp import protocol


@register("si")
class SIModel(ContinualModel):
    """A network trained with synaptic intelligence."""

    @classmethod
    def default_config(cls, benchmark):
        return protocol(benchmark, consolidation="si")

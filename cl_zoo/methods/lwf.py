"""LwF: learning without forgetting (Li and Hoiem, 2017).

The plain network with the LwF distillation switched on; the distillation
lives in `cl_zoo.consolidation.lwf`, so any method combines with it
(BD+LwF: `--method=bd_ewc --consolidation=lwf`). Its defaults are the SPP
paper's protocol, like the other methods of that comparison.
"""

from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register
from cl_zoo.methods.spp import protocol


@register("lwf")
class LwF(ContinualModel):
    """A network trained with LwF's distillation of its old heads."""

    @classmethod
    def default_config(cls, benchmark):
        return protocol(benchmark, consolidation="lwf")

"""GEM: gradient episodic memory (Lopez-Paz and Ranzato, 2017).

The plain network with GEM's projection switched on; the episodic memory
and the projection live in `cl_zoo.consolidation.gem` (a consolidation whose
gradient rule projects), so any method combines with it (BD+GEM:
`--method=bd_ewc --consolidation=gem`). Its defaults are the SPP paper's
protocol, like the other methods of that comparison.
"""

from cl_zoo.consolidation.gem import project_gradient, solve_gem_dual
from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register
from cl_zoo.methods.spp import protocol

__all__ = ["GEM", "project_gradient", "solve_gem_dual"]


@register("gem")
class GEM(ContinualModel):
    """A network whose steps never raise an old task's memory loss."""

    @classmethod
    def default_config(cls, benchmark):
        return protocol(benchmark, consolidation="gem")

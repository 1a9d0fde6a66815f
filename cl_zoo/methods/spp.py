"""SPP: soft parameter pruning, a label-free importance as a soft penalty.

The penalty and its importance live in `cl_zoo.consolidation.importance`,
so that any method can use it (`--method=bd_ewc --consolidation=spp` is
BD+SPP); this is the plain network with SPP switched on, with the SPP
paper's protocol as its defaults.
"""

from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register

# The SPP paper's MNIST protocol: MLP 784-512-256-10, SGD with learning rate
# 0.1 decayed by 0.96 (here per epoch), batch 256; one head per task (its
# tables set "single-head SGD" apart, and SGD-F's BWT of +0.10 on permuted
# MNIST needs a head per task). The number of epochs is not published: 5 per
# task on split MNIST is ours; on permuted MNIST 20 per task with a gentler
# decay (0.995 per epoch) is what reaches the paper's ACC (docs/RESULTS.md).
# SI, MAS, LwF and GEM take it too, so that tables compare like with like.
SPP_PROTOCOL = {
    "split_mnist": {
        "head": "multi", "hidden_units": (512, 256), "optimizer": "sgd",
        "lr": 0.1, "lr_decay": 0.96, "batch_size": 256, "epochs": 5,
    },
    "permuted_mnist": {
        "head": "multi", "hidden_units": (512, 256), "optimizer": "sgd",
        "lr": 0.1, "lr_decay": 0.995, "batch_size": 256, "epochs": 20,
    },
}


def protocol(benchmark, **settings):
    """The SPP paper's protocol for `benchmark` (if any) plus `settings`."""
    return {**SPP_PROTOCOL.get(benchmark, {}), **settings}


@register("spp")
class SPPModel(ContinualModel):
    """A network trained with soft parameter pruning."""

    @classmethod
    def default_config(cls, benchmark):
        settings = {"consolidation": "spp"}
        if benchmark == "permuted_mnist":
            # The best of our sweep (docs/RESULTS.md). The paper's lambda of
            # 4 is on another importance scale: ours changes nothing there.
            settings["spp_lambda"] = 100.0
        return protocol(benchmark, **settings)

"""PSP: binary parameter superposition (Cheung et al., NeurIPS 2019)."""

from cl_zoo.layers.bias_units import SuperpositionDense
from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register


@register("psp")
class PSP(ContinualModel):
    """Every dense layer binds its input to the task with a random +-1 key.

    `act(W (x * k_t) + b)`: the tasks share W but read it through nearly
    orthogonal keys, which limits their interference. Plain gradient descent
    on the shared weights; the keys are fixed. With one head, the output
    layer is keyed too.
    """

    @classmethod
    def default_config(cls, benchmark):
        defaults = {"head": "single", "consolidation": "none"}
        if benchmark == "permuted_mnist":
            # Adam at 1e-3 collapses on 100 tasks (12.6 %); 1e-4 gave 43.0 %
            # (the lr sweep in docs/RESULTS.md).
            defaults["lr"] = 1e-4
        return defaults

    @classmethod
    def check_config(cls, values):
        super().check_config(values)
        cls.check_hidden_layers(values, "keys")

    def __init__(self, *args, key_seed=0, **kwargs):
        self.key_seed = int(key_seed)
        super().__init__(*args, **kwargs)

    def make_hidden_layer(self, units, index):
        return SuperpositionDense(
            units, self.num_tasks, activation=self.activation,
            key_seed=self.key_seed * 1000 + index, name=f"psp_dense_{index}",
        )

    def make_head(self):
        if self.head_mode != "single":
            # One head per task ("multi") or one over local labels
            # ("shared"): the base model's TaskHead, without keys or bias
            # units.
            return super().make_head()
        return SuperpositionDense(
            self.num_classes, self.num_tasks,
            key_seed=self.key_seed * 1000 + 999, name="head",
        )

    def get_config(self):
        return {**super().get_config(), "key_seed": self.key_seed}

    @classmethod
    def init_args_from_config(cls, config):
        return {"key_seed": config.seed}

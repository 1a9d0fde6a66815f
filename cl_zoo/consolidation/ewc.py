"""Elastic weight consolidation (Kirkpatrick et al., 2017), offline and online.

Offline EWC adds one penalty per finished task,
`lambda/2 * sum_t F_t (p - p_t)^2`. A sum of quadratics is one quadratic plus
a constant, so the state is a single importance `sum_t F_t` and a single
Fisher-weighted anchor (`merge_quadratic`): the gradient is exact and the
memory does not grow with the number of tasks. Online EWC (Schwarz et al.,
2018) keeps `gamma * F + F_t` anchored at the latest parameters.
"""

from __future__ import annotations

from cl_zoo.consolidation import fisher as fisher_lib
from cl_zoo.consolidation.base import (
    FISHER_NORMALIZE,
    FISHER_SAMPLES,
    QuadraticConsolidation,
    check_normalization,
    normalize_importance,
)
from cl_zoo.consolidation.penalties import merge_quadratic
from cl_zoo.consolidation.per_example import task_chunks
from cl_zoo.consolidation.registry import register
from cl_zoo.settings import Setting

EWC_LAMBDA = Setting(
    "ewc_lambda", float, 100.0,
    "EWC strength lambda in lambda/2 * sum F (w - w*)^2.", minimum=0)
FISHER_MODE = Setting(
    "fisher_mode", str, "empirical",
    "Fisher estimate: 'empirical' (true labels), 'true' (labels sampled "
    "from the model) or 'expected' (exact expectation over classes).",
    choices=fisher_lib.FISHER_MODES)
EWC_GAMMA = Setting(
    "ewc_gamma", float, 0.9,
    "Online EWC's decay of the old Fisher.", minimum=0, maximum=1,
    expected="a number in [0, 1]")


@register("ewc")
class EWC(QuadraticConsolidation):
    """EWC's penalty with a diagonal Fisher from per-example gradients.

    Args:
        strength: lambda.
        fisher_samples: training examples of each task used for its Fisher.
        fisher_mode: `"empirical"`, `"true"` or `"expected"` (see
            `cl_zoo.consolidation.fisher`).
        online: online EWC (decayed running Fisher, latest anchor).
        gamma: online EWC's decay of the old Fisher.
        chunk_size: examples per vectorized per-example-gradient chunk.
        seed: seed of the Fisher's data order and label sampling.
        normalize: `"none"`, or `"max"` to divide each task's Fisher by its
            largest entry before it joins the penalty, so that every task is
            protected on the same scale however confident the model was on
            it (a saturated softmax makes the raw Fisher vanish).
    """

    name = "ewc"
    SETTINGS = (EWC_LAMBDA, FISHER_SAMPLES, FISHER_MODE, FISHER_NORMALIZE)

    @classmethod
    def from_config(cls, config):
        return cls(config.ewc_lambda, **cls._fisher_args(config))

    @staticmethod
    def _fisher_args(config):
        return {"fisher_samples": config.fisher_samples,
                "fisher_mode": config.fisher_mode, "seed": config.seed,
                "normalize": config.fisher_normalize}

    def __init__(
        self,
        strength,
        fisher_samples=1024,
        fisher_mode="empirical",
        online=False,
        gamma=1.0,
        chunk_size=128,
        seed=0,
        normalize="none",
    ):
        super().__init__(strength)
        self.normalize = check_normalization(normalize)
        if fisher_mode not in fisher_lib.FISHER_MODES:
            raise ValueError(
                f"Expected `fisher_mode` in {fisher_lib.FISHER_MODES}. "
                f"Received: fisher_mode={fisher_mode!r}"
            )
        if fisher_samples < 1:
            raise ValueError(
                "Expected a positive `fisher_samples`. "
                f"Received: fisher_samples={fisher_samples}"
            )
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(
                f"Expected 0 <= gamma <= 1. Received: gamma={gamma}"
            )
        self.fisher_samples = int(fisher_samples)
        self.fisher_mode = fisher_mode
        self.online = bool(online)
        self.gamma = float(gamma)
        self.chunk_size = int(chunk_size)
        self.seed = int(seed)
        if online:
            self.name = "online_ewc"

    def build(self, model):
        super().build(model)
        # One traced function for every task's Fisher (no retrace per task).
        self._fisher_fn = fisher_lib.make_fisher_fn(
            model, self.params, self.fisher_mode
        )

    def fisher(self, model, task, benchmark):
        dataset = task_chunks(
            model, benchmark, task, self.chunk_size, self.seed
        )
        return fisher_lib.diagonal_fisher(
            model,
            self.params,
            dataset,
            self.fisher_samples,
            mode=self.fisher_mode,
            seed=self.seed + task,
            fisher_fn=self._fisher_fn,
        )

    def end_task(self, model, task, benchmark):
        super().end_task(model, task, benchmark)
        fishers = normalize_importance(
            self.fisher(model, task, benchmark), self.normalize
        )
        for imp, anchor, param, f in zip(
            self.importance, self.anchor, self.params, fishers
        ):
            if self.online:
                imp.assign(self.gamma * imp + f)
                anchor.assign(param)
            else:
                merged, center = merge_quadratic(
                    imp, anchor, f, param.value
                )
                imp.assign(merged)
                anchor.assign(center)

    def config(self):
        return {
            **super().config(),
            "fisher_samples": self.fisher_samples,
            "fisher_mode": self.fisher_mode,
            "online": self.online,
            "gamma": self.gamma,
            "normalize": self.normalize,
        }


@register("online_ewc")
class OnlineEWC(EWC):
    """Online EWC (Schwarz et al., 2018): `gamma * F + F_t`, anchored at
    the latest parameters."""

    SETTINGS = (*EWC.SETTINGS, EWC_GAMMA)

    @classmethod
    def from_config(cls, config):
        return cls(config.ewc_lambda, gamma=config.ewc_gamma,
                   **cls._fisher_args(config))

    def __init__(self, strength, **kwargs):
        super().__init__(strength, online=True, **kwargs)

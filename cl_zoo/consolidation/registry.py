"""Consolidations by name (`--consolidation`), built from a RunConfig."""

from __future__ import annotations

from cl_zoo.consolidation.ewc import EWC
from cl_zoo.consolidation.importance import MAS, SI, SPP


def _ewc(config, online):
    return EWC(
        config.ewc_lambda,
        fisher_samples=config.fisher_samples,
        fisher_mode=config.fisher_mode,
        online=online,
        gamma=config.ewc_gamma if online else 1.0,
        seed=config.seed,
        normalize=config.fisher_normalize,
    )


_BUILDERS = {
    "none": lambda config: None,
    "ewc": lambda config: _ewc(config, online=False),
    "online_ewc": lambda config: _ewc(config, online=True),
    "spp": lambda config: SPP(
        config.spp_lambda, samples=config.fisher_samples, seed=config.seed,
        group_size=config.spp_group, normalize=config.fisher_normalize,
    ),
    "mas": lambda config: MAS(
        config.mas_lambda, samples=config.fisher_samples, seed=config.seed,
        normalize=config.fisher_normalize,
    ),
    "si": lambda config: SI(config.si_lambda, damping=config.si_damping),
}

CONSOLIDATIONS = tuple(sorted(_BUILDERS))


def make_consolidation(name, config):
    """The consolidation `name` with its settings from `config`."""
    if name not in _BUILDERS:
        raise ValueError(
            f"Unknown consolidation {name!r}; expected one of: "
            f"{', '.join(CONSOLIDATIONS)}."
        )
    return _BUILDERS[name](config)

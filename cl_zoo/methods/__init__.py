"""Continual-learning methods, one module each, registered by contract name."""

from cl_zoo.methods import (  # noqa: F401  (imported to register)
    amn,
    bpn,
    dgm,
    ewc,
    finetune,
    gem,
    joint,
    lwf,
    mas,
    psp,
    sgd,
    sgd_freeze,
    si,
    spp,
    stl,
)
from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import (
    UnknownMethodError,
    get_method,
    method_names,
    register,
)

__all__ = [
    "ContinualModel",
    "UnknownMethodError",
    "get_method",
    "method_names",
    "register",
]

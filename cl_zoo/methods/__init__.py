"""Continual-learning methods, one module each, registered by contract name.

Every module of this package is imported here, so a method's file registers
it (`@register("name")`) without a list to keep: a new method is one file.
"""

import importlib
import pkgutil

from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import (
    UnknownMethodError,
    get_method,
    method_names,
    register,
)

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "ContinualModel",
    "UnknownMethodError",
    "get_method",
    "method_names",
    "register",
]

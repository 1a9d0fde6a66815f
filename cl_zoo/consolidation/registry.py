"""Consolidations by name (`--consolidation`), discovered from their files.

A consolidation class registers itself with `@register("name")`, declares
the settings it reads (`SETTINGS`) and builds itself from a run's config
(`from_config`); every module of this package is imported on first use, so
a new consolidation is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil

_CONSOLIDATIONS = {}
_DISCOVERED = False


def register(name):
    """Class decorator: registers a `Consolidation` subclass as `name`."""

    def wrap(cls):
        if name in _CONSOLIDATIONS:
            raise ValueError(f"Consolidation {name!r} is registered twice.")
        if not callable(getattr(cls, "from_config", None)):
            raise TypeError(
                f"Consolidation {name!r} ({cls.__name__}) needs a "
                "classmethod from_config(config): runs build it from their "
                "config."
            )
        cls.name = name
        _CONSOLIDATIONS[name] = cls
        return cls

    return wrap


def _discover():
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = importlib.import_module("cl_zoo.consolidation")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"cl_zoo.consolidation.{info.name}")


def consolidation_names():
    """"none" and every registered consolidation, sorted."""
    _discover()
    return tuple(sorted(["none", *_CONSOLIDATIONS]))


def get_consolidation(name):
    """The class registered as `name`; None for "none"."""
    _discover()
    if name == "none":
        return None
    if name not in _CONSOLIDATIONS:
        raise ValueError(
            f"Unknown consolidation {name!r}; expected one of: "
            f"{', '.join(consolidation_names())}."
        )
    return _CONSOLIDATIONS[name]


def make_consolidation(name, config):
    """The consolidation `name` with its settings from `config`."""
    cls = get_consolidation(name)
    return None if cls is None else cls.from_config(config)

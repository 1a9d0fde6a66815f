"""The registry of methods, by their contract names (`--method`)."""

from __future__ import annotations

import keras

_METHODS = {}


class UnknownMethodError(ValueError):
    """A method name that is not registered; the message lists the names."""


def register(name):
    """Class decorator: registers a `ContinualModel` subclass as `name`.

    The class is also registered with Keras (package "cl_zoo"), so `.keras`
    files of it load with `keras.models.load_model`.
    """

    def wrap(cls):
        if name in _METHODS:
            raise ValueError(f"Method {name!r} is registered twice.")
        cls = keras.saving.register_keras_serializable(package="cl_zoo")(cls)
        cls.method_name = name
        _METHODS[name] = cls
        return cls

    return wrap


def method_names():
    return tuple(sorted(_METHODS))


def get_method(name):
    try:
        return _METHODS[name]
    except KeyError:
        raise UnknownMethodError(
            f"Unknown method {name!r}; expected one of: "
            f"{', '.join(method_names())}."
        ) from None

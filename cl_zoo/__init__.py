"""cl_zoo: a Keras 3 / TensorFlow model zoo for continual learning.

    result = cl_zoo.fit_tasks(model, benchmark, epochs=1)
    cl_zoo.evaluate_tasks(model, benchmark)

(`cl_zoo.sequence`; imported on first use, so `import cl_zoo` stays light.)
"""

__version__ = "0.1.0"

_SEQUENCE_API = ("fit_tasks", "evaluate_tasks", "SequenceResult")


def __getattr__(name):
    if name in _SEQUENCE_API:
        from cl_zoo import sequence

        return getattr(sequence, name)
    raise AttributeError(f"module 'cl_zoo' has no attribute {name!r}")

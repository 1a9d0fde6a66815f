"""cl_zoo: a Keras 3 / TensorFlow model zoo for continual learning."""

__version__ = "0.1.0"

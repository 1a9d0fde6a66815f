"""Quiet start-up: TensorFlow's C++ start-up lines kept off the terminal.

Before `absl::InitializeLog` runs, TensorFlow's C++ side writes a few lines
to file descriptor 2 whatever `TF_CPP_MIN_LOG_LEVEL` says ("Could not find
cuda drivers", the CPU-feature notice, `failed call to cuInit: ... (303)` on
a machine without a GPU). `quiet_startup()` sends descriptor 2 to a file
while TensorFlow imports and finds its devices, then writes back every line
that is not one of those known notices, so real errors still show.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# The start-up notices of TensorFlow 2.21 on a machine without a GPU.
NOISE = re.compile(
    r"Could not find cuda drivers"
    r"|cpu_feature_guard\.cc"
    r"|^To enable the following instructions"
    r"|^WARNING: All log messages before absl::InitializeLog"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation_placer\.cc"
)


@contextlib.contextmanager
def quiet_startup():
    """Drops TensorFlow's known start-up notices from stderr (descriptor 2)
    while the block runs; every other line is written back after it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line for line in captured.read().decode(
                    errors="replace").splitlines()
                if not NOISE.search(line)
            ]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def import_tensorflow_quietly():
    """Imports TensorFlow and finds its devices inside `quiet_startup`."""
    with quiet_startup():
        import tensorflow as tf

        tf.config.list_physical_devices()

"""The main of every py_test: runs pytest on the files given as arguments.

Bazel runs it from the runfiles root (the repository tree), so pytest finds
pyproject.toml (its settings) and tests/conftest.py there. The results go to
$XML_OUTPUT_FILE when Bazel asks for them.
"""

import os
import sys

import pytest


def main(argv):
    args = ["-p", "no:cacheprovider", *argv]
    xml_output = os.environ.get("XML_OUTPUT_FILE")
    if xml_output:
        args.append(f"--junitxml={xml_output}")
    return pytest.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

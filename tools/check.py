#!/usr/bin/env python3
"""Check the Python tooling and the committed test models/goldens.

    python3 -m pip install -r tools/requirements.txt
    python3 tools/check.py [-v]

Prints `tools: N passed, M failed` and exits non-zero on any failure.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True

from mhmoe_tools.test_tools import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(verbosity=2 if "-v" in sys.argv[1:] else 1))

#!/usr/bin/env python3
"""Entry point: see mhmoe_tools/gen_model.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mhmoe_tools.gen_model import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

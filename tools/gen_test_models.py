#!/usr/bin/env python3
"""Entry point: see mhmoe_tools/gen_test_models.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mhmoe_tools.gen_test_models import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""`python bench/compare.py NAME --a CMD --b CMD ...`: two commands in alternating pairs.

The command of bench/cli.py's `main` (its --help), as a script: bench/README.md's
warm-cell, warm-snapshot and default-slice benchmarks are run this way.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a script: `bench` from the checkout

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())

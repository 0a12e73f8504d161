"""`python -m attngraph ...`: the same command line as the `attngraph` console script."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())

"""`python -m jaxvrl.fit --config=... --topology=...` (jaxvrl/fit/check.py)."""

import sys

from jaxvrl.fit.check import main

sys.exit(main())

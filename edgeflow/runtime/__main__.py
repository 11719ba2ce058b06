"""`python -m edgeflow.runtime --config unit.json`: the worker of one placed unit."""

import sys

from edgeflow.runtime.worker import main

sys.exit(main())

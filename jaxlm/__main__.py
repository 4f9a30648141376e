"""python -m jaxlm COMMAND [ARGS...]: the command registry of jaxlm.cli."""

import sys

from jaxlm.cli import main

sys.exit(main())

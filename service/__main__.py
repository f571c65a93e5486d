"""``python -m service``: the ``stya2k`` command line (``python -m service serve --port 8001``, ``--help``, ...).

With no arguments it serves with settings from the STYA2K_* environment variables: the container image,
the deploy configs and the benchmarks start the service that way.
"""

import sys

from service.cli import main

sys.exit(main(sys.argv[1:] or ["serve"], prog="python -m service"))

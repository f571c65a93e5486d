"""StyA2K Serve: the HTTP service, its command line and Python client."""

import os
import sys

# Idle OpenMP threads sleep instead of spinning (unless the user chose otherwise). libgomp reads this once, when
# torch loads it, so it is set before anything of ours imports torch. With spinning threads a forward pass on a
# CPU shared with any other busy process (a second replica, a training job, the image codecs) ran 2-3x slower
# (docs/BENCHMARKS.md); a thread that sleeps costs microseconds per parallel region, next to seconds per image.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

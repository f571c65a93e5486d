"""StyA2K Serve: the HTTP service, its command line and Python client."""

import os
import sys

# Idle OpenMP threads sleep instead of spinning (unless the user chose otherwise). libgomp reads this once, when
# torch loads it, so it is set before anything of ours imports torch. With spinning threads a forward pass on a
# CPU shared with any other busy process (a second replica, a training job, the image codecs) ran 1.2-2.3x slower,
# and within noise of a sleeping one on a quiet CPU (bench/wait_policy.py, docs/BENCHMARKS.md); a sleeping thread
# costs microseconds per parallel region, next to seconds per image.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Tensors of >= 2 MiB on transparent huge pages (unless the user chose otherwise): PyTorch's CPU allocator reads
    # this once, at the first allocation, so it is set here too; model.hardware.request_huge_pages says why (1.35-
    # 1.5x on a 512 px forward pass on 2 cores) and model.hardware.huge_pages reports whether it took effect.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

"""Multi-style region weights from masks and label maps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from service import regions as regions_module


def test_soft_weights_sum_to_one_and_feather() -> None:
    regions = torch.zeros(2, 16, 32)
    regions[0, :, :16] = 1
    regions[1, :, 16:] = 1
    hard = regions_module.soft_weights(regions, 0.0)
    assert torch.equal(hard, regions)
    soft = regions_module.soft_weights(regions, 8.0)
    assert torch.allclose(soft.sum(dim=0), torch.ones(16, 32), atol=1e-5)
    row = soft[0, 8]
    assert row[0] > 0.99 and row[-1] < 0.01 and 0.3 < row[15] < 0.7  # a smooth ramp across the border
    assert torch.all(row[:-1] >= row[1:] - 1e-6)
    empty = regions_module.soft_weights(torch.zeros(3, 4, 4), 4.0)
    assert torch.allclose(empty, torch.full((3, 4, 4), 1 / 3))  # unclaimed pixels are shared


def test_masks_and_labels_give_the_same_regions() -> None:
    left = Image.new("L", (40, 20), 0)
    left.paste(255, (0, 0, 20, 20))
    right = Image.eval(left, lambda v: 255 - v)
    from_masks = regions_module.masks_to_regions([left, right], (20, 10))
    labels = torch.zeros(20, 40, dtype=torch.long)
    labels[:, 20:] = 1
    from_labels = regions_module.labels_to_regions(labels, 2, (20, 10))
    assert from_masks.shape == from_labels.shape == (2, 10, 20)
    # equal up to the one-pixel bilinear seam of the resized masks
    assert (from_masks - from_labels).abs().mean() < 0.05


PEAK_SCRIPT = """
import sys, torch
from PIL import Image
from service import regions
torch.set_num_threads(1)
side, count, feather, kind = int(sys.argv[1]), 4, float(sys.argv[2]), sys.argv[3]
if kind == "masks":
    masks = [Image.new("L", (side, side), 0) for _ in range(count)]
    for i, m in enumerate(masks):
        m.paste(255, (0, i * side // count, side, (i + 1) * side // count))
    inputs = count * side * side
else:
    labels = (torch.arange(side).view(side, 1) * count // side).expand(side, side).contiguous()
    inputs = side * side * 8
small = regions.masks_to_regions([Image.new("L", (64, 64), 0)] * count, (64, 64))
regions.soft_weights_(small, feather)  # the kernels' one-off allocations are not the job's

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # VmHWM (peak RSS) starts again from the RSS now
if kind == "masks":
    maps = regions.masks_to_regions(masks, (side, side))
else:
    maps = regions.labels_to_regions(labels, count, (side, side))
regions.soft_weights_(maps, feather)
grown = status("VmHWM:") - before
print(grown, regions.peak_bytes(count, side, side, feather) - inputs)
"""


@pytest.mark.parametrize("kind", ["masks", "labels"])
def test_peak_bytes_bounds_the_memory_region_weights_really_take(kind: str) -> None:
    """The jobs' memory budget reserves peak_bytes for a multistyle job's weights: measured in a fresh process
    (peak RSS growth at 1536 px, 4 styles, a wide feather), it must be an upper bound."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to measure a peak RSS")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, "1536", "32", kind], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()  # fmt: skip
    grown, bound = int(out[0]), int(out[1])
    weights = 4 * 1536 * 1536 * 4
    assert weights <= grown <= bound, (grown, bound)

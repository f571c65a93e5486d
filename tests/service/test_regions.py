"""Multi-style region weights from masks and label maps."""

from __future__ import annotations

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

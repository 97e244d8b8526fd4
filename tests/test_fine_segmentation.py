"""The fine segmentation head and the boxes of its masks (the mask-enhanced anchors' source)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autodetr.detector import build_criterion, build_detector
from autodetr.model.anchors import mask_extent_boxes
from autodetr.model.fine_segmentation import segmentation_strides
from autodetr.model.testing import make_test_plans


def _logits_of(label_map: np.ndarray, num_classes: int) -> torch.Tensor:
    """Confident logits [1, C + 1, ...] of a label map."""
    one_hot = np.eye(num_classes + 1, dtype=np.float32)[label_map]  # [..., C + 1]
    return torch.from_numpy(np.moveaxis(one_hot, -1, 0) * 10.0)[None]


def test_mask_box_is_the_bounding_box_of_the_mask_without_stray_voxels() -> None:
    shape = (20, 24, 28)
    labels = np.zeros(shape, np.int64)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ellipsoid = ((z - 10) / 6.0) ** 2 + ((y - 12) / 8.0) ** 2 + ((x - 9) / 5.0) ** 2 <= 1.0
    labels[ellipsoid] = 2
    labels[2:6, 3:9, 18:26] = 1
    labels[18, 22, 2] = 1  # one stray voxel far from organ 1
    boxes, found = mask_extent_boxes(_logits_of(labels, 3), (1, 1, 1), shape)
    assert found[0].tolist() == [True, True, False]  # organ 3 is nowhere

    def corners(box: torch.Tensor) -> np.ndarray:
        centre, size = box[:3].numpy(), box[3:].numpy()
        return np.concatenate([centre - size / 2, centre + size / 2]) * np.tile(shape, 2)

    where = np.argwhere(ellipsoid)
    assert np.allclose(corners(boxes[0, 1]), np.concatenate([where.min(0), where.max(0) + 1]), atol=1e-3)
    assert np.allclose(corners(boxes[0, 0]), [2, 3, 18, 6, 9, 26], atol=1e-3)


def test_mask_box_from_a_coarser_grid_lands_within_a_voxel() -> None:
    shape = (16, 16, 16)
    coarse = np.zeros((8, 8, 8), np.int64)
    coarse[2:6, 1:4, 3:8] = 1  # covers input voxels [4, 12) x [2, 8) x [6, 16)
    boxes, found = mask_extent_boxes(_logits_of(coarse, 1), (2, 2, 2), shape)
    assert bool(found[0, 0])
    centre, size = boxes[0, 0, :3].numpy() * 16, boxes[0, 0, 3:].numpy() * 16
    assert np.allclose(np.concatenate([centre - size / 2, centre + size / 2]), [4, 2, 6, 12, 8, 16], atol=0.01)


@pytest.mark.parametrize("stride", ["stem", "input"])
def test_fine_head_adds_one_segmentation_level_that_the_loss_trains(stride: str) -> None:
    plans = make_test_plans(num_classes=3, input_size=(16, 24, 32), stem_stride=(1, 2, 2))
    fine_stride = plans["network"]["stem_stride"] if stride == "stem" else [1, 1, 1]
    plans["network"]["fine_segmentation"] = {"stride": fine_stride, "channels": 8}
    torch.manual_seed(0)
    model = build_detector(plans, "dqm").train()
    images = torch.randn(2, 1, 16, 24, 32)
    outputs = model(images)
    strides = segmentation_strides(plans)
    assert len(outputs["seg_logits"]) == plans["network"]["num_feature_levels"] + 1
    assert list(strides[-1]) == list(fine_stride)
    for logits, level_stride in zip(outputs["seg_logits"], strides):
        assert tuple(logits.shape[2:]) == tuple(math.ceil(n / s) for n, s in zip((16, 24, 32), level_stride))
    seg_target = torch.zeros(2, 16, 24, 32, dtype=torch.long)
    seg_target[:, 4:10, 6:14, 8:20] = 2
    targets = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[7 / 16, 10 / 24, 14 / 32, 6 / 16, 8 / 24, 12 / 32]])}] * 2
    loss, components = build_criterion(plans, "dqm")(outputs, targets, seg_target)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and components["seg"] > 0
    assert model.fine_segmentation.classifier.weight.grad is not None
    assert float(model.fine_segmentation.classifier.weight.grad.abs().sum()) > 0


def test_fine_head_refuses_a_stride_it_cannot_reach() -> None:
    plans = make_test_plans(stem_stride=(1, 2, 2))
    plans["network"]["fine_segmentation"] = {"stride": [2, 2, 2], "channels": 8}
    with pytest.raises(ValueError, match="fine_segmentation.stride"):
        build_detector(plans, "dqm")

"""3D box utilities: IoU / GIoU against brute-force rasterisation, differentiability, conversions."""
import numpy as np
import torch

from autodetr import boxes as np_boxes
from autodetr import boxes_torch as tb

GRID = 9


def random_integer_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    low = rng.integers(0, GRID - 1, size=(count, 3))
    high = np.array([[rng.integers(l + 1, GRID + 1) for l in row] for row in low])
    return np.concatenate([low, high], axis=1).astype(np.float64)


def rasterise(box: np.ndarray) -> np.ndarray:
    mask = np.zeros((GRID, GRID, GRID), dtype=bool)
    z1, y1, x1, z2, y2, x2 = box.astype(int)
    mask[z1:z2, y1:y2, x1:x2] = True
    return mask


def brute_force_iou_giou(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    mask_a, mask_b = rasterise(a), rasterise(b)
    intersection = np.logical_and(mask_a, mask_b).sum()
    union = np.logical_or(mask_a, mask_b).sum()
    hull = np.concatenate([np.minimum(a[:3], b[:3]), np.maximum(a[3:], b[3:])])
    enclosing = rasterise(hull).sum()
    iou = intersection / union
    return iou, iou - (enclosing - union) / enclosing


def test_iou_and_giou_match_rasterised_brute_force():
    rng = np.random.default_rng(0)
    boxes_a, boxes_b = random_integer_boxes(rng, 12), random_integer_boxes(rng, 9)
    expected = np.array([[brute_force_iou_giou(a, b) for b in boxes_b] for a in boxes_a])  # [A, B, 2]
    ta, tb_ = torch.tensor(boxes_a), torch.tensor(boxes_b)
    np.testing.assert_allclose(tb.box_iou_pairwise(ta, tb_).numpy(), expected[..., 0], atol=1e-9)
    np.testing.assert_allclose(tb.generalized_box_iou_pairwise(ta, tb_).numpy(), expected[..., 1], atol=1e-9)
    np.testing.assert_allclose(np_boxes.box_iou(boxes_a, boxes_b), expected[..., 0], atol=1e-12)
    np.testing.assert_allclose(np_boxes.generalized_box_iou(boxes_a, boxes_b), expected[..., 1], atol=1e-12)
    pairs = min(len(boxes_a), len(boxes_b))
    np.testing.assert_allclose(
        tb.elementwise_generalized_box_iou(ta[:pairs], tb_[:pairs]).numpy(), np.diag(expected[..., 1])[:pairs], atol=1e-9
    )
    np.testing.assert_allclose(tb.elementwise_box_iou(ta[:pairs], tb_[:pairs]).numpy(), np.diag(expected[..., 0])[:pairs], atol=1e-9)


def test_giou_equals_iou_for_identical_boxes():
    rng = np.random.default_rng(1)
    boxes = torch.tensor(random_integer_boxes(rng, 7))
    giou = tb.elementwise_generalized_box_iou(boxes, boxes)
    torch.testing.assert_close(giou, tb.elementwise_box_iou(boxes, boxes))
    torch.testing.assert_close(giou, torch.ones(7, dtype=giou.dtype))
    torch.testing.assert_close(torch.diagonal(tb.generalized_box_iou_pairwise(boxes, boxes)), torch.ones(7, dtype=giou.dtype))


def test_giou_is_differentiable():
    generator = torch.Generator().manual_seed(2)
    centre_a = torch.rand(5, 6, generator=generator, dtype=torch.float64) * 0.5 + 0.2
    centre_b = torch.rand(5, 6, generator=generator, dtype=torch.float64) * 0.5 + 0.2
    centre_a.requires_grad_(True)

    def loss(a: torch.Tensor) -> torch.Tensor:
        return tb.elementwise_generalized_box_iou(tb.centre_to_corners(a), tb.centre_to_corners(centre_b))

    assert torch.autograd.gradcheck(loss, (centre_a,), eps=1e-6, atol=1e-5)
    pairwise = tb.generalized_box_iou_pairwise(tb.centre_to_corners(centre_a), tb.centre_to_corners(centre_b)).sum()
    (grad,) = torch.autograd.grad(pairwise, centre_a)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # disjoint boxes still get a gradient from the enclosing-box term (the point of GIoU)
    far_a = torch.tensor([[0.1, 0.1, 0.1, 0.05, 0.05, 0.05]], dtype=torch.float64, requires_grad=True)
    far_b = torch.tensor([[0.8, 0.8, 0.8, 0.05, 0.05, 0.05]], dtype=torch.float64)
    value = tb.elementwise_generalized_box_iou(tb.centre_to_corners(far_a), tb.centre_to_corners(far_b)).sum()
    (grad,) = torch.autograd.grad(value, far_a)
    assert value < 0 and grad[0, :3].abs().sum() > 0


def test_conversions_volume_clip_agree_with_numpy():
    rng = np.random.default_rng(3)
    corners = random_integer_boxes(rng, 6)
    centre = tb.corners_to_centre(torch.tensor(corners))
    np.testing.assert_allclose(centre.numpy(), np_boxes.corners_to_centre(corners))
    np.testing.assert_allclose(tb.centre_to_corners(centre).numpy(), corners)
    np.testing.assert_allclose(tb.box_volume(torch.tensor(corners)).numpy(), np_boxes.box_volume(corners))
    shape = (5, 6, 7)
    np.testing.assert_allclose(tb.clip_boxes(torch.tensor(corners), shape).numpy(), np_boxes.clip_boxes(corners, shape))
    normalised = torch.tensor([[-0.1, 0.2, 0.3, 0.5, 1.2, 0.9]])
    torch.testing.assert_close(tb.clip_boxes(normalised), torch.tensor([[0.0, 0.2, 0.3, 0.5, 1.0, 0.9]]))
    # degenerate (zero-size) boxes give finite GIoU
    flat = torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0, 2.0]])
    assert torch.isfinite(tb.generalized_box_iou_pairwise(flat, flat)).all()

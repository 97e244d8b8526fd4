"""The segmentation loss from boxes (`autodetr.losses.box_segmentation`): it prefers a mask inside the box to
one outside, learns overlapping boxes of two classes at once, and a box-only phantom's model finds its organs'
boxes with the mask-enhanced anchors after a short overfit, as a label-map model does."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autodetr.boxes_torch import centre_to_corners, corners_to_centre
from autodetr.losses.box_segmentation import multiscale_box_supervised_loss
from autodetr.model.anchors import mask_extent_boxes

INPUT = (16, 32, 32)


def box_targets(corners: list[list[float]], labels: list[int]) -> list[dict[str, torch.Tensor]]:
    """One sample's targets from input-voxel corner boxes (z1 y1 x1 z2 y2 x2)."""
    scale = torch.tensor(list(INPUT) * 2, dtype=torch.float32)
    return [{"labels": torch.tensor(labels), "boxes": corners_to_centre(torch.tensor(corners) / scale)}]


def mask_logits(*regions: tuple[slice, slice, slice], channels: int = 3) -> torch.Tensor:
    """Full-resolution logits whose class-1 mask is the union of `regions` (confident everywhere)."""
    logits = torch.zeros((1, channels) + INPUT)
    logits[0, 1] = -8.0
    for region in regions:
        logits[0, 1][region] = 8.0
    logits[0, 2] = -8.0
    return logits


def test_a_mask_inside_the_box_lowers_the_loss_and_one_outside_raises_it():
    targets = box_targets([[4, 8, 2, 12, 20, 10]], [1])
    masks = {"box": [np.s_[4:12, 8:20, 2:10]], "organ": [np.s_[4:12, 10:18, 2:10], np.s_[5:11, 8:20, 4:8]],
             "shrunk": [np.s_[6:10, 11:17, 4:8]], "outside": [np.s_[0:6, 22:30, 12:20]], "nothing": []}
    loss = {name: float(multiscale_box_supervised_loss([mask_logits(*regions)], targets, INPUT, [[1, 1, 1]])[0])
            for name, regions in masks.items()}
    # an organ touching every face of its box (a plus shape) costs as little as the filled box; one short of
    # the faces costs more
    assert loss["organ"] == pytest.approx(loss["box"], abs=0.02)
    assert loss["box"] < loss["shrunk"] < loss["nothing"] < loss["outside"], loss
    # a coarse level (stride 2) scores the same masks in the same order
    coarse = {name: float(multiscale_box_supervised_loss([mask_logits(region)[:, :, ::2, ::2, ::2]], targets, INPUT,
                                                         [[2, 2, 2]])[0])
              for name, region in {"box": np.s_[4:12, 8:20, 2:10], "outside": np.s_[0:6, 22:30, 12:20]}.items()}
    assert coarse["box"] < 0.05 < coarse["outside"]


def test_the_pairwise_term_prefers_a_mask_that_follows_the_image_inside_the_box():
    """BoxInst's pairwise term: inside a box holding a bright organ (a staircase touching every face) and
    darker tissue, the mask of the organ costs less than a shifted staircase that cuts through both, although
    the two have the same projections; without the image (or with weight 0) the term is absent."""
    targets = box_targets([[4, 8, 2, 12, 20, 14]], [1])
    organ = (np.s_[4:12, 8:14, 2:8], np.s_[4:12, 14:20, 8:14])
    image = torch.full((1, 1) + INPUT, -1.0)
    for region in organ:
        image[(0, 0) + region] = 1.0
    follows = mask_logits(*organ)
    cuts = mask_logits(np.s_[4:12, 8:14, 2:11], np.s_[4:12, 14:20, 5:14])

    def loss(logits: torch.Tensor, weight: float, images: torch.Tensor | None = image) -> float:
        return float(multiscale_box_supervised_loss([logits], targets, INPUT, [[1, 1, 1]], images, weight)[0])

    assert loss(follows, 0.0) == pytest.approx(loss(cuts, 0.0), abs=1e-3)  # the same projections
    assert loss(follows, 1.0) == pytest.approx(loss(follows, 0.0), abs=1e-3)  # its edges are the image's
    assert loss(cuts, 1.0) - loss(cuts, 0.0) > 0.1  # the cut through uniform tissue is what costs
    assert loss(cuts, 1.0, None) == loss(cuts, 0.0)


def test_overlapping_boxes_of_two_classes_are_both_learned_and_read_back_by_the_mask_anchors():
    """Free logits trained on the loss alone: the anchors' mask boxes of both classes land on their boxes,
    edges between voxel centres included, and the absent class stays unfound."""
    corners = [[2.0, 4.5, 6.0, 14.0, 20.0, 18.5], [6.0, 10.0, 13.0, 12.5, 28.0, 26.0]]
    targets = box_targets(corners, [1, 2])
    logits = torch.zeros((1, 4, 8, 16, 16), requires_grad=True)  # stride 2, classes 1..3
    optimiser = torch.optim.Adam([logits], lr=0.1)
    for _ in range(150):
        loss, _ = multiscale_box_supervised_loss([logits], targets, INPUT, [[2, 2, 2]])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    boxes, found = mask_extent_boxes(logits, (2, 2, 2), INPUT)
    assert found[0].tolist() == [True, True, False]
    read_back = centre_to_corners(boxes[0, :2]) * torch.tensor(list(INPUT) * 2)
    np.testing.assert_allclose(read_back.numpy(), np.asarray(corners), atol=0.6)


def test_box_only_phantom_trains_its_segmentation_and_the_mask_anchors_leave_the_atlas(roots):
    from autodetr.atomic_io import read_json, read_npz
    from autodetr.boxes import box_iou, denormalise_centre
    from autodetr.detector import build_criterion, build_detector
    from autodetr.losses.criterion import make_targets
    from autodetr.phantom.generator import make_phantom_dataset
    from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess
    from autodetr.preprocessing.masks_to_boxes import masks_to_boxes
    from autodetr.training.dataset import pad_to_input
    from test_overfit import TINY_NETWORK

    torch.manual_seed(0)
    masks = make_phantom_dataset(roots["raw"], dataset_id=597, num_cases=2, num_test_cases=0, size="small", seed=1,
                                 num_processes=1)
    masks_to_boxes(masks, roots["raw"] / "Dataset598_PhantomBoxes", with_images=True)
    folder = plan_and_preprocess(598, preset="cpu", num_processes=1, rho=2, overrides=TINY_NETWORK)
    plans = read_json(folder / "plans.json")
    assert plans["loss"]["seg_supervision"] == "boxes" and plans["loss"]["seg"] > 0
    plans.pop("atlas")  # an uninformed atlas (every anchor the whole body): the boxes must come from the image
    case = read_npz(sorted(folder.glob("*.npz"))[0])
    image, seg = pad_to_input(case["image"], case["seg"], plans["input_size"])
    images, seg_target = torch.from_numpy(image)[None], torch.from_numpy(seg.astype(np.int64))[None]
    targets = make_targets([case["boxes"]], [case["classes"]], plans["input_size"])
    model, criterion = build_detector(plans, "dqm"), build_criterion(plans, "dqm")
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(75):
        loss, components = criterion(model(images), targets, seg_target)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
    assert components["seg"] < 0.5
    model.eval()
    with torch.no_grad():
        logits = model(images, with_segmentation=True)["seg_logits"][-1]
    boxes, found = mask_extent_boxes(logits, tuple(model.fine_stride), tuple(plans["input_size"]))
    body = np.asarray([[0, 0, 0, *case["image"].shape[1:]]], dtype=np.float64)
    mask_ious, atlas_ious = [], []
    for truth, value in zip(case["boxes"], case["classes"]):
        index = int(value) - 1
        predicted = denormalise_centre(boxes[0, index].numpy(), plans["input_size"])
        mask_ious.append(float(box_iou(truth[None], predicted[None])[0, 0]) if found[0, index] else 0.0)
        atlas_ious.append(float(box_iou(truth[None], body)[0, 0]))
    assert float(found[0].float().mean()) >= 0.8
    assert np.mean(mask_ious) > 0.6 and np.mean(mask_ious) > np.mean(atlas_ious) + 0.3, (mask_ious, atlas_ious)

"""Whole network at a tiny plan: output contract, forward + backward, every parameter gets a gradient."""
import numpy as np
import pytest
import torch

from autodetr.losses import SetCriterion, make_targets
from autodetr.model import build_model
from autodetr.model.testing import make_test_plans
from autodetr.model.backbone import feature_level_shapes
from autodetr.model.heads import inverse_sigmoid


def toy_case(plans, batch=2):
    generator = torch.Generator().manual_seed(0)
    shape = plans["input_size"]
    images = torch.randn(batch, 1, *shape, generator=generator)
    seg = torch.zeros(batch, *shape, dtype=torch.long)
    seg[0, 2:6, 3:12, 4:20] = 1
    seg[0, 9:10, 14:15, 25:26] = 3
    boxes = [np.array([[2, 3, 4, 6, 12, 20], [9, 14, 25, 10, 15, 26]]), np.zeros((0, 6))]
    classes = [np.array([1, 3]), np.zeros(0)]
    return images, make_targets(boxes[:batch], classes[:batch], shape), seg


@pytest.mark.parametrize(
    "backbone,kwargs",
    [
        ("fpn", {}),
        ("resnet50", {}),
        ("resnet101", {"stage_channels": (4, 8, 8)}),
        ("fpn", {"input_size": (15, 23, 31), "stem_stride": (1, 1, 1), "stage_strides": ((1, 2, 2), (2, 2, 2), (1, 2, 2)), "num_feature_levels": 3}),
    ],
)
@pytest.mark.parametrize("matcher", ["dqm"])
def test_forward_backward_every_parameter_gets_a_finite_gradient(backbone, kwargs, matcher):
    torch.manual_seed(0)
    plans = make_test_plans(num_classes=3, backbone=backbone, **kwargs)
    model = build_model(plans).train()
    images, targets, seg = toy_case(plans)
    outputs = model(images)
    batch, queries, classes = 2, plans["network"]["num_queries"], 3
    layers, hidden = plans["network"]["decoder"]["layers"], plans["network"]["hidden_dim"]
    assert outputs["pred_logits"].shape == (batch, queries, classes + 1)
    assert outputs["pred_boxes"].shape == (batch, queries, 6)
    assert len(outputs["aux_outputs"]) == layers - 1
    assert outputs["query_features"].shape == (layers, batch, queries, hidden)
    assert outputs["reference_boxes"].shape == (layers, batch, queries, 6)
    level_shapes = feature_level_shapes(plans)
    assert [tuple(s.shape[2:]) for s in outputs["seg_logits"]] == level_shapes
    assert all(s.shape[:2] == (batch, classes + 1) for s in outputs["seg_logits"])
    loss, components = SetCriterion(plans, matcher=matcher)(outputs, targets, seg)
    assert np.isfinite(components["total"]) and components["seg"] > 0
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    not_finite = [name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert not not_finite, not_finite


def test_reference_boxes_contract_and_eval_mode():
    plans = make_test_plans(decoder_layers=3)
    model = build_model(plans).eval()
    with torch.no_grad():
        # perturb the box heads so refinement actually moves boxes
        for mlp in model.decoder.box_refine:
            mlp.layers[-1].weight.normal_(0, 0.1)
        images = torch.randn(1, 1, *plans["input_size"])
        outputs = model(images)
    assert outputs["seg_logits"] == []
    boxes = [aux["pred_boxes"] for aux in outputs["aux_outputs"]] + [outputs["pred_boxes"]]
    for layer in range(1, 3):  # r_k = b_{k-1}
        torch.testing.assert_close(outputs["reference_boxes"][layer], boxes[layer - 1])
    # b_k = sigmoid(inverse_sigmoid(r_k) + delta_k(h_k))
    delta = model.decoder.box_refine[2](outputs["query_features"][2])
    torch.testing.assert_close(outputs["pred_boxes"], (inverse_sigmoid(outputs["reference_boxes"][2]) + delta).sigmoid())
    assert ((outputs["pred_boxes"] > 0) & (outputs["pred_boxes"] < 1)).all()
    with torch.no_grad():
        assert len(model(images, with_segmentation=True)["seg_logits"]) == plans["network"]["num_feature_levels"]


def test_a_few_steps_reduce_the_loss():
    """Tiny overfit smoke test: the whole chain trains (loss goes down in a few AdamW steps)."""
    torch.manual_seed(0)
    plans = make_test_plans(num_classes=3)
    model = build_model(plans).train()
    criterion = SetCriterion(plans, matcher="dqm")
    images, targets, seg = toy_case(plans, batch=1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss, _ = criterion(model(images), targets, seg)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]

"""D-RMM head, loss and inference (seed 004)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from autodetr.boxes import box_iou, centre_to_corners
from autodetr.detector import build_criterion, build_detector
from autodetr.errors import InputError
from autodetr.losses.drmm import DRMMLoss, balance_location_gradient, drmm_gt_terms
from autodetr.model.drmm_head import DRMMHead, drmm_select_detections, log_mixing_weights
from autodetr.model.testing import make_test_plans


def _layer(objectness_logits, class_logits, mu, gamma) -> dict:
    """A head-output layer dict from raw logits, locations and scales."""
    return {"log_objectness": F.logsigmoid(objectness_logits), "class_log_probs": F.log_softmax(class_logits, dim=-1),
            "mu": mu, "gamma": gamma}


def _random_layer(generator: torch.Generator, batch: int, queries: int, classes: int, requires_grad: bool = False):
    objectness_logits = torch.randn(batch, queries, generator=generator)
    class_logits = torch.randn(batch, queries, classes, generator=generator)
    mu = 0.2 + 0.6 * torch.rand(batch, queries, 6, generator=generator)
    gamma = 0.05 + 0.2 * torch.rand(batch, queries, 6, generator=generator)
    leaves = [t.requires_grad_(requires_grad) for t in (objectness_logits, class_logits, mu, gamma)]
    return _layer(*leaves), leaves


def _random_targets(generator: torch.Generator, counts: list[int], classes: int) -> list[dict]:
    targets = []
    for count in counts:
        targets.append(
            {
                "labels": torch.randint(1, classes + 1, (count,), generator=generator),
                "boxes": 0.2 + 0.6 * torch.rand(count, 6, generator=generator),
            }
        )
    return targets


def _reference_loss(layers: list[dict], targets: list[dict], beta: float, normalisation: str) -> tuple[float, float, float]:
    """The paper's formula in float64 with plain products and sums; logs only at the end."""
    total = nll_total = mcm_total = 0.0
    for layer in layers:
        o = np.exp(layer["log_objectness"].detach().double().numpy())
        p = np.exp(layer["class_log_probs"].detach().double().numpy())
        mu = layer["mu"].detach().double().numpy()
        gamma = layer["gamma"].detach().double().numpy()
        per_sample = []
        for b, target in enumerate(targets):
            pi = o[b] / o[b].sum()
            values = []
            for box, label in zip(target["boxes"].double().numpy(), target["labels"].numpy()):
                z = (box[None, :] - mu[b]) / gamma[b]
                cauchy = np.prod(1.0 / (math.pi * gamma[b] * (1.0 + z**2)), axis=-1)
                component = pi * cauchy * p[b, :, label - 1]
                nll = -math.log(component.sum())
                mcm = -math.log(component.max() / component.sum())
                values.append((nll, mcm))
            per_sample.append(values)
        if normalisation == "instance":
            flat = [v for values in per_sample for v in values]
            nll = sum(v[0] for v in flat) / len(flat)
            mcm = sum(v[1] for v in flat) / len(flat)
        else:
            kept = [values for values in per_sample if values]
            nll = sum(sum(v[0] for v in values) / len(values) for values in kept) / len(kept)
            mcm = sum(sum(v[1] for v in values) / len(values) for values in kept) / len(kept)
        total += nll + beta * mcm
        nll_total += nll
        mcm_total += mcm
    return total, nll_total, mcm_total


@pytest.mark.parametrize("normalisation", ["instance", "sample"])
def test_loss_matches_direct_float64_formula(normalisation):
    generator = torch.Generator().manual_seed(0)
    layers = [_random_layer(generator, 3, 6, 4)[0] for _ in range(2)]
    targets = _random_targets(generator, [3, 0, 2], 4)
    outputs = dict(layers[-1], aux_outputs=layers[:-1])
    loss, parts = DRMMLoss(beta=0.5, normalisation=normalisation)(outputs, targets)
    expected, expected_nll, expected_mcm = _reference_loss(layers, targets, 0.5, normalisation)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-4)
    assert parts["nll"] == pytest.approx(expected_nll, rel=1e-5, abs=1e-4)
    assert parts["mcm"] == pytest.approx(expected_mcm, rel=1e-5, abs=1e-4)
    assert parts["num_gt"] == 5
    # The location gradient balance changes the step, never the value.
    balanced, _ = DRMMLoss(beta=0.5, normalisation=normalisation, location_beta=1.0)(outputs, targets)
    assert balanced.item() == pytest.approx(expected, rel=1e-5, abs=1e-4)
    # Without aux loss only the final layer counts.
    loss_final, _ = DRMMLoss(beta=0.5, normalisation=normalisation, aux_loss=False)(outputs, targets)
    assert loss_final.item() == pytest.approx(_reference_loss(layers[-1:], targets, 0.5, normalisation)[0], rel=1e-5, abs=1e-4)


def test_loss_in_float32_under_autocast_and_low_precision_inputs():
    generator = torch.Generator().manual_seed(1)
    layer, _ = _random_layer(generator, 2, 5, 3)
    targets = _random_targets(generator, [2, 2], 3)
    reference, _ = DRMMLoss()(layer, targets)
    low = {key: value.to(torch.bfloat16) for key, value in layer.items()}
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss, _ = DRMMLoss()(low, targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference.item(), rel=0.05, abs=0.5)


def _extreme_layer(requires_grad: bool = True):
    # 4 queries: tiny scale on the GT, tiny scale far off, huge scale, moderate scale far off.
    mu = torch.tensor([[[0.5] * 6, [0.001] * 6, [0.5] * 6, [0.999] * 6]] * 2)
    gamma = torch.tensor([[[1e-6] * 6, [1e-6] * 6, [1e3] * 6, [0.05] * 6]] * 2)
    objectness_logits = torch.tensor([[30.0, -30.0, 0.0, 5.0]] * 2)
    class_logits = torch.tensor([[[40.0, -40.0], [-40.0, 40.0], [0.0, 0.0], [1.0, -1.0]]] * 2)
    leaves = [t.clone().requires_grad_(requires_grad) for t in (objectness_logits, class_logits, mu, gamma)]
    return _layer(*leaves), leaves


@pytest.mark.parametrize("counts", [[2, 2], [0, 0], [2, 0], [0, 1]])
def test_gradients_finite_for_extreme_scales_and_empty_samples(counts):
    far = torch.tensor([[0.999, 0.001, 0.999, 0.999, 0.001, 0.5], [0.5 + 1e-7] * 6])
    targets = [{"labels": torch.tensor([2, 1])[:n], "boxes": far[:n]} for n in counts]
    for normalisation in ("instance", "sample"):
        layer, leaves = _extreme_layer()
        outputs = dict(layer, aux_outputs=[layer])
        loss, parts = DRMMLoss(normalisation=normalisation)(outputs, targets)
        assert torch.isfinite(loss)
        grads = torch.autograd.grad(loss, leaves, allow_unused=False)
        for grad in grads:
            assert torch.isfinite(grad).all()
        for value in parts.values():
            assert math.isfinite(value)
        if sum(counts) == 0:
            assert loss.item() == 0.0 and all((g == 0).all() for g in grads)
        for b, n in enumerate(counts):
            if n == 0:  # a sample without ground truth gets no gradient at all
                assert all((g[b] == 0).all() for g in grads)


def _identical_queries(num_equal: int, num_negligible: int):
    box = torch.tensor([0.4, 0.5, 0.6, 0.2, 0.3, 0.25])
    mu = torch.cat([box.expand(num_equal, 6), torch.full((num_negligible, 6), 0.95)])[None]
    gamma = torch.cat([torch.full((num_equal, 6), 0.02), torch.full((num_negligible, 6), 1e-4)])[None]
    objectness_logits = torch.cat([torch.full((num_equal,), 2.0), torch.full((num_negligible,), -20.0)])[None]
    class_logits = torch.zeros(1, num_equal + num_negligible, 3)
    return _layer(objectness_logits, class_logits, mu, gamma), [{"labels": torch.tensor([2]), "boxes": box[None]}]


def test_mcm_zero_for_one_dominant_component_and_log_k_for_k_equal():
    layer, targets = _identical_queries(1, 5)
    _, mcm, _ = drmm_gt_terms(layer, targets)
    assert 0.0 <= mcm.item() < 1e-6
    for k in (2, 3, 7):
        layer, targets = _identical_queries(k, 0)
        _, mcm, _ = drmm_gt_terms(layer, targets)
        assert mcm.item() == pytest.approx(math.log(k), abs=1e-5)
        layer, targets = _identical_queries(k, 4)
        _, mcm, _ = drmm_gt_terms(layer, targets)
        assert mcm.item() == pytest.approx(math.log(k), abs=1e-5)


def test_mcm_gives_no_gradient_to_the_cauchy_factor():
    generator = torch.Generator().manual_seed(2)
    layer, (objectness_logits, class_logits, mu, gamma) = _random_layer(generator, 2, 6, 3, requires_grad=True)
    targets = _random_targets(generator, [3, 1], 3)
    _, mcm, _ = drmm_gt_terms(layer, targets)
    grads = torch.autograd.grad(
        mcm.sum(), [objectness_logits, class_logits, mu, gamma], allow_unused=True, retain_graph=True
    )
    assert all(g is None or (g == 0).all() for g in grads[2:])
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0  # pi and p are trained by MCM
    # Table 7, third row: p detached too.
    _, mcm, _ = drmm_gt_terms(layer, targets, detach_class_in_mcm=True)
    grads = torch.autograd.grad(mcm.sum(), [objectness_logits, class_logits], allow_unused=True, retain_graph=True)
    assert grads[0].abs().sum() > 0 and (grads[1] is None or (grads[1] == 0).all())
    # Without stop-gradient the Cauchy factor is trained by MCM (sanity check of the test itself).
    _, mcm, _ = drmm_gt_terms(layer, targets, detach_cauchy_in_mcm=False)
    grads = torch.autograd.grad(mcm.sum(), [mu, gamma])
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    # Through the head: the box/scale MLP gets nothing from MCM, the class and objectness layers do.
    torch.manual_seed(0)
    head = DRMMHead(16, 3, 1)
    features = torch.randn(1, 2, 6, 16)
    reference = torch.rand(1, 2, 6, 6) * 0.6 + 0.2
    out = head(features, reference)
    _, mcm, _ = drmm_gt_terms(out, targets)
    params = list(head.heads[0].box_embed.parameters())
    grads = torch.autograd.grad(mcm.sum(), params + [head.heads[0].class_embed.weight], allow_unused=True)
    assert all(g is None or (g == 0).all() for g in grads[:-1])
    assert grads[-1].abs().sum() > 0


def test_head_shapes_and_ranges():
    torch.manual_seed(0)
    layers, batch, queries, hidden, classes = 3, 2, 7, 32, 4
    head = DRMMHead(hidden, classes, layers)
    features = torch.randn(layers, batch, queries, hidden)
    reference = torch.rand(layers, batch, queries, 6) * 0.8 + 0.1
    out = head(features, reference)
    assert len(out["aux_outputs"]) == layers - 1
    for layer_index, layer in enumerate(out["aux_outputs"] + [out]):
        assert layer["log_objectness"].shape == (batch, queries)
        assert layer["class_log_probs"].shape == (batch, queries, classes)
        assert layer["mu"].shape == (batch, queries, 6) and layer["gamma"].shape == (batch, queries, 6)
        assert all(layer[k].dtype == torch.float32 for k in ("log_objectness", "class_log_probs", "mu", "gamma"))
        assert (layer["log_objectness"] < 0).all()
        assert torch.allclose(layer["class_log_probs"].logsumexp(-1), torch.zeros(batch, queries), atol=1e-5)
        assert ((layer["mu"] > 0) & (layer["mu"] < 1)).all()
        # The delta starts at zero: mu starts at the reference box.
        assert torch.allclose(layer["mu"], reference[layer_index], atol=1e-5)
        floor = head.scale_floor_of(layer["mu"])
        assert (layer["gamma"] > floor).all()
        size = layer["mu"][..., 3:]
        assert torch.allclose(floor, (0.04 * torch.cat([size, size], -1)).clamp(min=1e-4))
        pi = log_mixing_weights(layer["log_objectness"]).exp()
        assert torch.allclose(pi.sum(-1), torch.ones(batch), atol=1e-6)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        low = head(features, reference)
    assert low["mu"].dtype == torch.float32 and low["gamma"].dtype == torch.float32
    with pytest.raises(ValueError):
        head(features[:2], reference[:2])


def test_select_detections_keeps_best_query_per_class():
    log_objectness = torch.log(torch.tensor([[0.9, 0.5, 0.8, 0.1]]))
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.05, 0.95]]])
    mu = torch.rand(1, 4, 6)
    out = {"log_objectness": log_objectness, "class_log_probs": probs.log(), "mu": mu, "gamma": torch.ones(1, 4, 6)}
    (result,) = drmm_select_detections(out)
    assert result["labels"].tolist() == [1, 2]
    # class 1: 0.9 * 0.9 (query 0); class 2: max(0.4, 0.56, 0.095) -> query 2
    assert torch.allclose(result["scores"], torch.tensor([0.81, 0.56]))
    assert torch.equal(result["boxes"], mu[0, [0, 2]])
    (two,) = drmm_select_detections(out, max_per_class=2)
    assert two["labels"].tolist() == [1, 1, 2, 2] and two["boxes"].shape == (4, 6)
    (kept,) = drmm_select_detections(out, score_threshold=0.6)
    assert kept["labels"].tolist() == [1]


def test_tiny_optimisation_fits_three_boxes():
    torch.manual_seed(0)
    gt_boxes = torch.tensor(
        [[0.30, 0.30, 0.35, 0.20, 0.20, 0.25], [0.70, 0.50, 0.40, 0.30, 0.20, 0.25], [0.50, 0.70, 0.70, 0.15, 0.30, 0.20]]
    )
    targets = [{"labels": torch.tensor([1, 2, 3]), "boxes": gt_boxes}]
    hidden, queries = 32, 10
    head = DRMMHead(hidden, 3, 1)
    features = torch.nn.Parameter(torch.randn(1, 1, queries, hidden))
    reference = torch.cat([0.2 + 0.6 * torch.rand(1, 1, queries, 3), torch.full((1, 1, queries, 3), 0.2)], -1)
    optimiser = torch.optim.Adam(list(head.parameters()) + [features], lr=3e-3)
    criterion = DRMMLoss(beta=0.5)
    losses = []
    for _ in range(200):
        loss, parts = criterion(head(features, reference), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 10.0
    with torch.no_grad():
        (result,) = drmm_select_detections(head(features, reference))
    assert result["labels"].tolist() == [1, 2, 3]
    ious = box_iou(centre_to_corners(result["boxes"].numpy()), centre_to_corners(gt_boxes.numpy()))
    assert (np.diag(ious) > 0.5).all(), ious


def test_location_gradient_scaled_by_scale_value_kept():
    mu = torch.tensor([[0.2, 0.5], [0.7, 0.4]], requires_grad=True)
    gamma = torch.tensor([[0.01, 0.03], [0.02, 0.04]])
    balanced = balance_location_gradient(mu, gamma, beta=1.0)
    assert torch.equal(balanced, mu)
    (balanced * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    assert torch.allclose(mu.grad, torch.tensor([[1.0, 2.0], [3.0, 4.0]]) * gamma / gamma.mean())
    # A far-off coordinate with a large scale is no longer drowned by fitted ones with small scales.
    layer = {
        "log_objectness": torch.zeros(1, 1), "class_log_probs": torch.zeros(1, 1, 1),
        "mu": torch.tensor([[[0.5, 0.5, 0.5, 0.2, 0.2, 0.2]]], requires_grad=True),
        "gamma": torch.tensor([[[0.3, 0.01, 0.01, 0.01, 0.01, 0.01]]]),
    }
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.2, 0.501, 0.5, 0.2, 0.2, 0.2]])}]
    for beta, far_wins in ((0.0, False), (1.0, True)):
        layer["mu"].grad = None
        nll, _, _ = drmm_gt_terms(layer, targets, location_beta=beta)
        nll.sum().backward()
        grad = layer["mu"].grad[0, 0].abs()
        assert bool(grad[0] > grad[1]) == far_wins, (beta, grad)


def test_class_groups_one_class_per_query_and_every_parameter_trained():
    torch.manual_seed(0)
    layers, queries, hidden, classes = 2, 7, 16, 3
    head = DRMMHead(hidden, classes, layers, class_groups=True)
    assert all(layer_head.class_embed is None for layer_head in head.heads)
    features = torch.randn(layers, 2, queries, hidden)
    reference = torch.rand(layers, 2, queries, 6) * 0.6 + 0.2
    out = head(features, reference)
    probs = out["class_log_probs"].exp()
    assert torch.equal(probs.argmax(-1)[0], torch.arange(queries) % classes)
    assert torch.allclose(probs.sum(-1), torch.ones(2, queries))
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.4, 0.4, 0.4, 0.2, 0.2, 0.2], [0.6, 0.5, 0.5, 0.1, 0.3, 0.2]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.3, 0.3, 0.3]])}]
    loss, _ = DRMMLoss(location_beta=1.0)(out, targets)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    # A ground truth of class c is explained by the queries of group c only: moving every other
    # query onto it changes nothing.
    class_one = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.4, 0.4, 0.2, 0.2, 0.2]])}]
    layer = {k: v.detach()[:1] for k, v in out.items() if k != "aux_outputs"}
    moved = dict(layer, mu=layer["mu"].clone())
    others = torch.arange(queries) % classes != 0
    moved["mu"][0, others] = class_one[0]["boxes"][0]
    before, _, _ = drmm_gt_terms(layer, class_one)
    after, _, _ = drmm_gt_terms(moved, class_one)
    assert torch.allclose(before, after)
    moved["mu"][0, ~others] = class_one[0]["boxes"][0]
    assert drmm_gt_terms(moved, class_one)[0] < before - 1.0
    with torch.no_grad():
        found = drmm_select_detections(layer)[0]
    assert found["labels"].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="one query per class"):
        DRMMHead(hidden, 9, 1, class_groups=True)(torch.randn(1, 1, 4, hidden), torch.rand(1, 1, 4, 6) * 0.5 + 0.25)


def test_detector_reads_class_groups_from_plans_and_old_plans_keep_the_paper_head():
    plans = make_test_plans(num_classes=3, num_queries=6)
    grouped = build_detector(plans, "drmm")
    assert plans["network"]["drmm"]["class_groups"] and all(h.class_embed is None for h in grouped.head.drmm.heads)
    assert build_criterion(plans, "drmm").drmm.location_beta == 1.0
    old = make_test_plans(num_classes=3, num_queries=6)
    del old["network"]["drmm"], old["loss"]["drmm_location_beta"]
    paper = build_detector(old, "drmm")
    assert all(h.class_embed is not None for h in paper.head.drmm.heads)
    assert paper.head.drmm.scale_floor == 0.04 and build_criterion(old, "drmm").drmm.location_beta == 0.0
    too_few = make_test_plans(num_classes=3, num_queries=2)
    too_few["network"]["drmm"]["class_groups"] = True
    with pytest.raises(InputError, match="at least one query per class"):
        build_detector(too_few, "drmm")

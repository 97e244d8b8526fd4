"""Class-anchored queries: the organ atlas, the untrained detector (= the atlas prior), matching inside
class groups, and the valid region that anchors live in."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from autodetr.atomic_io import read_json, read_npz
from autodetr.boxes import clip_boxes, denormalise_centre
from autodetr.detector import build_detector, detect
from autodetr.evaluation.api import CaseResult, evaluate_cases
from autodetr.losses.grouped import GroupedMatcher
from autodetr.model.anchors import anchor_boxes, place_anchors, query_classes, valid_boxes_from_shapes
from autodetr.phantom.generator import make_phantom_dataset
from autodetr.plans import apply_overrides
from autodetr.planners.atlas import OrganAtlas, atlas_from_cases, atlas_from_preprocessed, prior_detections
from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess
from autodetr.training.augmentation import LateralMirrorTransform, SpatialTransformPerSample
from autodetr.training.dataset import pad_to_input

TINY_NETWORK = {
    "network.hidden_dim": 32,
    "network.msa": {"patch_size": 2, "heads": 4, "depth": 1, "dropout": 0.0, "bias": False, "ffn_dim": 64},
    "network.decoder": {"layers": 2, "heads": 4, "points": 4, "ffn_dim": 64, "dropout": 0.0},
}


def test_atlas_median_range_and_frequency() -> None:
    shape = (10, 20, 40)
    boxes = [np.array([[0, 0, 0, 5, 10, 20]], float), np.array([[2, 2, 4, 7, 12, 24], [0, 0, 0, 10, 20, 40]], float),
             np.array([[4, 4, 8, 9, 14, 28]], float)]
    classes = [np.array([1]), np.array([1, 2]), np.array([1])]
    atlas = atlas_from_cases(boxes, classes, [shape] * 3, num_classes=3, source="test")
    assert np.allclose(atlas.median[0], [0.45, 0.35, 0.35, 0.5, 0.5, 0.5])  # the middle case, relative to the shape
    assert np.all(atlas.low[0] <= atlas.median[0]) and np.all(atlas.median[0] <= atlas.high[0])
    assert np.allclose(atlas.frequency, [1.0, 1 / 3, 0.0]) and list(atlas.cases) == [3, 1, 0]
    assert np.allclose(atlas.median[1], [0.5, 0.5, 0.5, 1, 1, 1])
    again = OrganAtlas.from_json(atlas.to_json())
    assert np.allclose(again.median, atlas.median, atol=1e-6) and again.source == "test"
    corners, scores, labels = prior_detections(atlas, shape)
    assert list(labels) == [1, 2]  # a class no training case contains is never predicted by the prior
    assert np.allclose(corners[0], [2, 2, 4, 7, 12, 24]) and scores[0] > scores[1]


def test_anchors_start_at_the_median_and_spread_over_the_range() -> None:
    atlas = OrganAtlas.uninformed(3)
    atlas.median[:] = [0.5, 0.5, 0.5, 0.2, 0.2, 0.2]
    atlas.low[:] = [0.3, 0.3, 0.3, 0.1, 0.1, 0.1]
    atlas.high[:] = [0.7, 0.7, 0.7, 0.3, 0.3, 0.3]
    anchors = anchor_boxes(atlas, 12).numpy()
    classes = query_classes(12, 3).numpy()
    assert list(classes) == [1, 2, 3] * 4
    assert np.allclose(anchors[:3], atlas.median)
    spread = anchors[3:]
    assert np.all(spread >= atlas.low[0] - 1e-6) and np.all(spread <= atlas.high[0] + 1e-6)
    group = anchors[classes == 1]
    assert len({tuple(np.round(a, 4)) for a in group}) == len(group)  # distinct starting boxes in a group
    # placed in a valid region: the relative anchor scales with the unpadded part of the input
    placed = place_anchors(torch.as_tensor(anchors), torch.tensor([[0.0, 0.0, 0.0, 0.5, 1.0, 1.0]]))[0].numpy()
    assert np.allclose(placed[0], [0.25, 0.5, 0.5, 0.1, 0.2, 0.2])


@pytest.fixture(scope="module")
def phantom_plans(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("anchored")
    with pytest.MonkeyPatch.context() as patch:
        for kind in ("raw", "preprocessed", "results"):
            (base / kind).mkdir()
            patch.setenv(f"AUTODETR_{kind}", str(base / kind))
        make_phantom_dataset(base / "raw", dataset_id=500, num_cases=5, num_test_cases=0, size="small", seed=3, num_processes=1)
        folder = plan_and_preprocess(500, preset="cpu", num_processes=1, rho=3, overrides=TINY_NETWORK)
    return folder, read_json(folder / "plans.json")


@pytest.mark.parametrize("objective,fine_level", [("dqm", False), ("hungarian", False), ("dqm", True)])
def test_untrained_detector_predicts_the_atlas_prior(phantom_plans, objective, fine_level) -> None:
    from autodetr.preprocessing.restore import RestoreInfo

    folder, plans = phantom_plans
    plans = apply_overrides(copy.deepcopy(plans), {"network.decoder_fine_level": fine_level})
    assert plans["network"]["queries"] == "class_anchored" and "atlas" in plans and "atlas" in plans["decisions"]
    assert plans["network"]["num_queries"] == 3 * len(plans["classes"])
    cases = [f"phantom_{i:03d}" for i in range(5)]
    atlas = atlas_from_preprocessed(folder, cases[:3], len(plans["classes"]))  # "training" cases only
    plans = dict(plans, atlas=atlas.to_json())
    torch.manual_seed(0)
    model = build_detector(plans, objective).eval()
    label_value = {c["index"]: c["label_value"] for c in plans["classes"]}
    detector_cases, prior_cases = [], []
    for case_id in cases[3:]:
        case = read_npz(folder / f"{case_id}.npz")
        restore = RestoreInfo.from_json(read_json(folder / f"{case_id}.json")["restore"])
        shape = case["image"].shape[1:]
        image, _ = pad_to_input(case["image"], None, plans["input_size"])
        with torch.no_grad():
            outputs = model(torch.from_numpy(image)[None], valid_boxes=valid_boxes_from_shapes([shape], plans["input_size"]))
        found = detect(outputs, objective)[0]
        boxes = clip_boxes(denormalise_centre(found["boxes"].numpy(), plans["input_size"]), shape)
        corners, scores, labels = prior_detections(atlas, shape)
        keep = np.isin(found["labels"].numpy(), labels)
        assert np.array_equal(found["labels"].numpy()[keep], labels)
        assert np.allclose(boxes[keep], clip_boxes(corners, shape), atol=1e-3)
        assert np.allclose(found["scores"].numpy()[keep], scores, atol=1e-6)
        gt = restore.preprocessed_to_original(case["boxes"])
        gt_labels = np.asarray([label_value[int(c)] for c in case["classes"]])
        to_values = np.vectorize(lambda c: label_value[int(c)])
        detector_cases.append(CaseResult(case_id, gt, gt_labels, restore.preprocessed_to_original(boxes[keep]),
                                         found["scores"].numpy()[keep].astype(np.float64), to_values(labels)))
        prior_cases.append(CaseResult(case_id, gt, gt_labels, restore.preprocessed_to_original(clip_boxes(corners, shape)),
                                      scores, to_values(labels)))
    detector_metrics, prior_metrics = evaluate_cases(detector_cases), evaluate_cases(prior_cases)
    for key in ("mAP", "AP50", "AP75", "mAR"):
        assert detector_metrics[key] == pytest.approx(prior_metrics[key], abs=1e-9), key


def test_decoder_fine_level_is_sampled_and_trained_by_the_box_loss(phantom_plans) -> None:
    """`network.decoder_fine_level`: the fine head's features are one more decoder level, projected once;
    a box loss reaches that projection (once the box head is past its zero start)."""
    folder, plans = phantom_plans
    plans = apply_overrides(copy.deepcopy(plans), {"network.decoder_fine_level": True})
    torch.manual_seed(0)
    model = build_detector(plans, "dqm").train()
    assert model.decoder.layers[0].cross_attention.levels == plans["network"]["num_feature_levels"] + 1
    for mlp in model.decoder.box_refine:
        torch.nn.init.normal_(mlp.layers[-1].weight, std=0.01)
    outputs = model(torch.randn(1, 1, *plans["input_size"]))
    outputs["pred_boxes"].sum().backward()
    assert float(model.decoder_fine_level[0].weight.grad.abs().sum()) > 0
    without_fine_head = apply_overrides(copy.deepcopy(plans), {"network.fine_segmentation": None})
    with pytest.raises(ValueError, match="decoder_fine_level needs network.fine_segmentation"):
        build_detector(without_fine_head, "dqm")


def test_dqm_inside_groups_gives_each_present_class_its_own_queries() -> None:
    num_classes, rho, eta = 4, 5, 2
    num_queries = rho * num_classes
    torch.manual_seed(1)
    outputs = {
        "pred_objectness": torch.randn(2, num_queries),
        "pred_boxes": torch.rand(2, num_queries, 6) * 0.5 + 0.25,
        "query_classes": query_classes(num_queries, num_classes),
    }
    targets = [
        {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.3, 0.2, 0.2, 0.2], [0.6, 0.6, 0.6, 0.3, 0.3, 0.3]])},
        {"labels": torch.tensor([2, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.3, 0.2, 0.2, 0.2], [0.7, 0.7, 0.7, 0.2, 0.2, 0.2]])},
    ]
    matches = GroupedMatcher(copies=1 + eta)(outputs, targets)
    # sample 1 has two instances of class 2: its 5 queries cannot give 3 to each, the largest equal share is 2
    for (rows, columns), target, share in zip(matches, targets, (1 + eta, 2)):
        assert len(set(rows.tolist())) == len(rows)  # distinct queries
        labels = target["labels"][columns]
        assert torch.equal(outputs["query_classes"][rows], labels)  # every query of its ground truth's group
        for truth in range(len(target["labels"])):
            assert int((columns == truth).sum()) == share
    # absent classes get no query
    assert set(outputs["query_classes"][matches[0][0]].tolist()) == {1, 3}
    assert set(outputs["query_classes"][matches[1][0]].tolist()) == {2}
    hungarian = GroupedMatcher(copies=1)(outputs, targets)
    assert [len(rows) for rows, _ in hungarian] == [2, 2]


def test_one_per_class_shortcut_equals_the_exact_assignment() -> None:
    matcher = GroupedMatcher(copies=3)
    classes = query_classes(60, 6)
    for seed in range(5):
        torch.manual_seed(seed)
        logits, boxes = torch.randn(60), torch.rand(60, 6) * 0.5 + 0.25
        target = {"labels": torch.randperm(6)[:4] + 1, "boxes": torch.rand(4, 6) * 0.3 + 0.3}
        fast = matcher._one_per_class(logits, boxes, target, classes)
        exact = matcher._by_assignment(logits, boxes, target, classes)
        assert torch.equal(fast[0], exact[0]) and torch.equal(fast[1], exact[1])


def test_dqm_one_each_when_a_group_is_too_small() -> None:
    outputs = {"pred_objectness": torch.zeros(1, 6), "pred_boxes": torch.full((1, 6, 6), 0.5), "query_classes": query_classes(6, 2)}
    targets = [{"labels": torch.tensor([2, 2]), "boxes": torch.full((2, 6), 0.4)}]
    rows, columns = GroupedMatcher(copies=3)(outputs, targets)[0]
    assert len(rows) == 2 and sorted(columns.tolist()) == [0, 1]  # 3 queries of group 2 for 2 instances: one each
    assert torch.all(outputs["query_classes"][rows] == 2)


def test_inference_fuses_the_queries_dqm_trains_on_each_organ(phantom_plans) -> None:
    """DQM: a class's box is the score-weighted mean of its group's 1 + eta best queries, its score the
    best query's; Hungarian and the paper's learned queries keep the best query's own box."""
    from autodetr.detector import fused_queries_of

    _, plans = phantom_plans
    eta = plans["matching"]["eta"]
    assert fused_queries_of(plans, "dqm") == 1 + eta
    assert fused_queries_of(plans, "hungarian") == 1 and fused_queries_of(plans, "drmm") == 1
    assert fused_queries_of(apply_overrides(copy.deepcopy(plans), {"network.queries": "learned"}), "dqm") == 1
    num_classes, rho = 3, 5
    classes = query_classes(rho * num_classes, num_classes)
    torch.manual_seed(2)
    outputs = {"pred_objectness": torch.randn(1, rho * num_classes), "pred_boxes": torch.rand(1, rho * num_classes, 6),
               "query_classes": classes}
    fused = detect(outputs, "dqm", fused_queries=3)[0]
    best = detect(outputs, "dqm")[0]
    scores = outputs["pred_objectness"][0].sigmoid()
    for row, label in enumerate(fused["labels"].tolist()):
        group = torch.nonzero(classes == label).flatten()
        top = scores[group].topk(3)
        expected = (top.values[:, None] * outputs["pred_boxes"][0, group[top.indices]]).sum(0) / top.values.sum()
        assert torch.allclose(fused["boxes"][row], expected, atol=1e-6)
        assert torch.allclose(best["boxes"][row], outputs["pred_boxes"][0, group[top.indices[0]]])
        assert fused["scores"][row] == pytest.approx(float(top.values[0])) == float(best["scores"][row])
    assert len(detect(outputs, "dqm", max_per_class=2, fused_queries=3)[0]["labels"]) == 2 * num_classes  # no fusion


def test_valid_box_follows_the_mirror_and_the_spatial_transform() -> None:
    shape = (12, 16, 20)
    data = np.full((1, 1, *shape), -1.0, dtype=np.float32)
    data[0, 0, :6, :10, :8] = 1.0  # the unpadded case occupies the low corner
    seg = np.zeros((1, 1, *shape), dtype=np.int16)
    valid = np.array([[0, 0, 0, 6, 10, 8]], dtype=np.float64)
    batch = LateralMirrorTransform([], 1, p_per_sample=1.0)(data=data.copy(), seg=seg.copy(), lr_axis=np.array([2]),
                                                           valid_boxes=valid.copy())
    assert np.allclose(batch["valid_boxes"][0], [0, 0, 12, 6, 10, 20])
    assert np.all(batch["data"][0, 0, :6, :10, 12:] == 1.0)
    np.random.seed(0)
    spatial = SpatialTransformPerSample(shape, do_elastic_deform=False, do_rotation=False, do_scale=True, scale=(1.4, 1.4),
                                        p_scale_per_sample=1.0, order_data=1)
    batch = spatial(data=data.copy(), seg=seg.copy(), valid_boxes=valid.copy())
    inside = np.nonzero(batch["data"][0, 0] > 0.5)
    found = [a.min() for a in inside] + [a.max() + 1 for a in inside]
    assert batch["seg"].shape == seg.shape
    assert np.allclose(batch["valid_boxes"][0], found, atol=1.0)  # the valid box moved with the image
    assert not np.allclose(batch["valid_boxes"][0], valid[0], atol=1.0)


def _decoder_references(spread: "torch.Tensor | None", boxes: torch.Tensor, found: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Layer-0 reference boxes [B, N, 6] of a tiny anchored decoder given mask proposals."""
    from autodetr.model.decoder import DeformableDecoder

    decoder = DeformableDecoder(16, anchors.shape[0], 1, 2, 1, 2, 32, 0.0, anchors=anchors, mask_spread=spread)
    values = [torch.zeros(1, 16, 4, 4, 4)]
    with torch.no_grad():
        return decoder(values, torch.ones(1, 3), None, (boxes, found)).reference_boxes[0]


def test_mask_spread_starts_every_query_of_a_found_class_around_its_mask_box() -> None:
    from autodetr.model.anchors import mask_spread_offsets

    atlas = OrganAtlas.uninformed(3)
    anchors = anchor_boxes(atlas, 12)
    offsets = mask_spread_offsets(12, 3, 0.2)
    assert torch.all(offsets[:3] == 0)  # slot 0: the mask box itself
    assert float(offsets.abs().max()) <= 0.2 + 1e-6 and bool((offsets[3:].abs().amax(-1) > 0).all())  # slots 1..: moved
    assert torch.equal(offsets[3], offsets[4]) and not torch.equal(offsets[3], offsets[6])  # one offset per slot
    mask = torch.tensor([[[0.3, 0.4, 0.5, 0.2, 0.1, 0.3], [0.6, 0.6, 0.6, 0.1, 0.1, 0.1], [0.5, 0.5, 0.5, 0.1, 0.1, 0.1]]])
    found = torch.tensor([[True, True, False]])
    spread = _decoder_references(offsets, mask, found, anchors)[0]
    classes = query_classes(12, 3)
    for label, is_found in ((1, True), (2, True), (3, False)):
        group = spread[classes == label]
        if not is_found:  # no mask: the atlas anchors, as without the spread
            assert torch.allclose(group, place_anchors(anchors, torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]))[0][classes == label])
            continue
        box = mask[0, label - 1]
        assert torch.allclose(group[0], box)
        assert torch.all((group[:, :3] - box[:3]).abs() <= 0.2 * box[3:] + 1e-6)  # centres within 0.2 sizes
        assert torch.all((group[:, 3:] / box[3:] - 1).abs() <= 0.2 + 1e-5)
        assert len({tuple(np.round(b.numpy(), 5)) for b in group}) == len(group)  # distinct boxes
    # without the spread only slot 0 moves to the mask box
    plain = _decoder_references(None, mask, found, anchors)[0]
    atlas_placed = place_anchors(anchors, torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]))[0]
    assert torch.allclose(plain[0], mask[0, 0]) and torch.allclose(plain[2], atlas_placed[2])
    assert torch.allclose(plain[3:], atlas_placed[3:])

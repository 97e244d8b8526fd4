"""Hungarian and Dense Query Matching (Eq. 5), the set criterion (Eq. 8), segmentation targets, selection."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from autodetr.losses import SetCriterion, assign_with_copies, build_matcher, downsample_labels, dqm_duplicates, make_targets
from autodetr.losses.matchers import DenseQueryMatcher, HungarianMatcher
from autodetr.model import select_detections
from autodetr.model.testing import make_test_plans


def brute_force_min_cost(cost: np.ndarray, copies: int) -> float:
    """Minimum over all injective maps of the G * copies ground-truth slots to queries."""
    num_queries, num_targets = cost.shape
    slots = [g for g in range(num_targets) for _ in range(copies)]
    return min(sum(cost[q, g] for q, g in zip(chosen, slots)) for chosen in itertools.permutations(range(num_queries), len(slots)))


@pytest.mark.parametrize("num_queries,num_targets,eta", [(6, 2, 1), (7, 2, 2), (5, 1, 3), (6, 3, 1), (6, 3, 0)])
def test_dqm_gives_each_ground_truth_one_plus_eta_distinct_queries_at_minimum_cost(num_queries, num_targets, eta):
    rng = np.random.default_rng(num_queries * 10 + num_targets + eta)
    for _ in range(5):
        cost = rng.normal(size=(num_queries, num_targets))
        rows, columns = assign_with_copies(cost, 1 + eta)
        assert len(set(rows.tolist())) == len(rows)  # no query used twice
        assert np.bincount(columns, minlength=num_targets).tolist() == [1 + eta] * num_targets
        assert cost[rows, columns].sum() == pytest.approx(brute_force_min_cost(cost, 1 + eta))


def test_dqm_with_eta_zero_equals_hungarian():
    rng = np.random.default_rng(7)
    for _ in range(10):
        cost = rng.normal(size=(9, 4))
        rows, columns = assign_with_copies(cost, 1)
        ref_rows, ref_columns = linear_sum_assignment(cost)
        order = np.argsort(ref_rows)
        assert rows.tolist() == ref_rows[order].tolist() and columns.tolist() == ref_columns[order].tolist()
    outputs = {"pred_logits": torch.randn(2, 9, 4), "pred_boxes": torch.rand(2, 9, 6) * 0.5 + 0.2}
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.rand(2, 6) * 0.5 + 0.2}, {"labels": torch.tensor([2]), "boxes": torch.rand(1, 6) * 0.5 + 0.2}]
    for dqm, hungarian in zip(DenseQueryMatcher(eta=0)(outputs, targets), HungarianMatcher()(outputs, targets)):
        assert torch.equal(dqm[0], hungarian[0]) and torch.equal(dqm[1], hungarian[1])


def test_dqm_reduces_duplicates_gracefully_when_queries_run_out():
    cost = np.random.default_rng(3).normal(size=(5, 2))
    rows, columns = assign_with_copies(cost, 3)  # 6 slots > 5 queries -> 2 copies each
    assert np.bincount(columns).tolist() == [2, 2] and len(set(rows.tolist())) == 4
    rows, columns = assign_with_copies(np.random.default_rng(4).normal(size=(2, 3)), 3)  # N < G: one-to-one, partial
    assert len(rows) == 2 and len(set(columns.tolist())) == 2
    rows, columns = assign_with_copies(np.zeros((4, 0)), 3)
    assert len(rows) == 0


def test_eta_from_plans():
    plans = make_test_plans()
    plans["matching"] = {"rho": 10, "lambda": 0.2}
    assert dqm_duplicates(plans) == 2  # ceil(0.2 * 10), robust to 2.0000000000000004
    plans["matching"] = {"rho": 30, "lambda": 0.1}
    assert dqm_duplicates(plans) == 3
    plans["matching"]["eta"] = 4
    assert dqm_duplicates(plans) == 4
    assert build_matcher(plans, "dqm").copies == 5 and build_matcher(plans, "hungarian").copies == 1


def random_outputs(batch=2, queries=12, classes=3, layers=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    def layer():
        return {
            "pred_logits": torch.randn(batch, queries, classes + 1, generator=generator).requires_grad_(True),
            "pred_boxes": (torch.rand(batch, queries, 6, generator=generator) * 0.6 + 0.2).requires_grad_(True),
        }
    final = layer()
    return {**final, "aux_outputs": [layer() for _ in range(layers - 1)]}


@pytest.mark.parametrize("matcher", ["dqm", "hungarian"])
def test_criterion_counts_positives_and_handles_empty_samples(matcher):
    plans = make_test_plans(num_classes=3, rho=4, matching_lambda=0.5)  # N = 12, eta = 2
    criterion = SetCriterion(plans, matcher=matcher)
    outputs = random_outputs()
    targets = make_targets([np.array([[1, 2, 3, 6, 8, 9], [0, 0, 0, 4, 4, 4]]), np.zeros((0, 6))], [np.array([1, 3]), np.zeros(0)], plans["input_size"])
    seg = torch.zeros(2, 16, 24, 32, dtype=torch.long)
    loss, components = criterion(outputs, targets, seg)
    copies = 1 + dqm_duplicates(plans) if matcher == "dqm" else 1
    assert components["num_positive"] == 2 * copies
    assert math.isfinite(components["total"]) and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(outputs["pred_boxes"].grad).all()
    # all-empty batch: no NaN, classification only
    empty = make_targets([np.zeros((0, 6))] * 2, [np.zeros(0)] * 2, plans["input_size"])
    loss, components = criterion(random_outputs(seed=1), empty, None)
    assert torch.isfinite(loss) and components["l1"] == 0 and components["giou"] == 0 and components["num_positive"] == 0


def test_box_losses_are_normalised_by_positive_queries():
    plans = make_test_plans(num_classes=2, rho=4)
    plans["loss"].update(cls=0.0, giou=0.0, bbox=1.0)
    criterion = SetCriterion(plans, matcher=DenseQueryMatcher(eta=2))
    boxes = torch.full((1, 8, 6), 0.5)
    outputs = {"pred_logits": torch.zeros(1, 8, 3), "pred_boxes": boxes, "aux_outputs": []}
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.3, 0.5, 0.5, 0.5, 0.5, 0.5]])}]
    loss, components = criterion(outputs, targets)
    assert components["num_positive"] == 3
    assert components["l1"] == pytest.approx(0.2)  # each of the 3 positives is off by 0.2 in one coordinate


def test_make_targets_normalises_corner_boxes():
    targets = make_targets([np.array([[2, 0, 4, 6, 12, 8]])], [np.array([2])], (8, 12, 16))
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[0.5, 0.5, 0.375, 0.5, 1.0, 0.25]]))
    assert targets[0]["labels"].tolist() == [2]


def test_downsampled_labels_keep_small_organs():
    labels = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    labels[0, :, :, :6] = 1          # big organ
    labels[0, 3, 3, 3] = 2           # one-voxel organ inside the big one
    labels[0, 7, 7, 7] = 3           # one-voxel organ in the background corner
    down = downsample_labels(labels, (2, 2, 2), num_classes=3, stride=(4, 4, 4))
    assert down[0, 0, 0, 0] == 2 and down[0, 1, 1, 1] == 3 and down[0, 1, 0, 0] == 1
    odd = downsample_labels(labels[:, :7, :7, :5], (3, 3, 2), num_classes=3, stride=(3, 3, 3))  # ceil blocks, last partial
    assert odd.shape == (1, 3, 3, 2) and set(odd.unique().tolist()) <= {0, 1, 2}
    assert (odd == 2).sum() == 1


def test_select_detections_keeps_best_query_per_class():
    logits = torch.full((1, 4, 3), -5.0)
    logits[0, 1, 1] = 5.0   # query 1 -> class 1
    logits[0, 2, 2] = 3.0   # query 2 -> class 2 (query 3 weaker)
    logits[0, 3, 2] = 2.0
    boxes = torch.rand(1, 4, 6)
    (result,) = select_detections({"pred_logits": logits, "pred_boxes": boxes}, max_per_class=1)
    assert result["labels"].tolist() == [1, 2]
    torch.testing.assert_close(result["boxes"], boxes[0, [1, 2]])
    torch.testing.assert_close(result["scores"], logits[0, [1, 2], [1, 2]].new_tensor(
        [logits[0, 1].softmax(-1)[1], logits[0, 2].softmax(-1)[2]]))
    (two,) = select_detections({"pred_logits": logits, "pred_boxes": boxes}, max_per_class=2)
    assert two["labels"].tolist() == [1, 1, 2, 2] and two["scores"][2] >= two["scores"][3]

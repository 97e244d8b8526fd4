"""The typed plan view: defaults in one place, old plans upgraded, derived values with one formula."""
from __future__ import annotations

import copy

import pytest

from autodetr.errors import InputError
from autodetr.model.testing import make_test_plans
from autodetr.plans import TRAINING_DEFAULTS, Plans, eta_of, upgrade


def old_plan() -> dict:
    """A plan as versions before class-anchored queries wrote it: no query kind, no training section,
    no D-RMM location weight, the channel count only in channel_names."""
    plans = make_test_plans(num_classes=3)
    del plans["network"]["in_channels"]
    del plans["training"]
    del plans["loss"]["drmm_location_beta"]
    plans["channel_names"] = {"0": "CT", "1": "PET"}
    return plans


def test_an_old_plan_reads_with_the_behaviour_it_was_trained_with() -> None:
    original = old_plan()
    view = Plans(original)
    assert view.query_kind == "learned"
    assert view.in_channels == 2
    assert view.loss["drmm_location_beta"] == 0.0 and view.loss["drmm_beta"] == 0.5
    assert view.training["grad_clip_norm"] == TRAINING_DEFAULTS["grad_clip_norm"]
    assert view.training["augmentation"]["p_mirror"] == TRAINING_DEFAULTS["augmentation"]["p_mirror"]
    assert "training" not in original  # the view never changes the caller's dict
    upgraded = upgrade(copy.deepcopy(original))
    assert upgrade(copy.deepcopy(upgraded)) == upgraded  # upgrading twice changes nothing


def test_eta_has_one_formula_clipped_to_one_to_five() -> None:
    assert eta_of(10, 0.2) == 2  # ceil(0.2 * 10) although 0.2 * 10 = 2.0000000000000004
    assert eta_of(30, 0.1) == 3
    assert eta_of(30, 0.5) == 5 and eta_of(2, 0.1) == 1
    plans = make_test_plans()
    plans["matching"] = {"rho": 10, "lambda": 0.2, "M": 3}
    assert Plans(plans).eta == 2
    plans["matching"]["eta"] = 4  # a plan may set eta itself
    assert Plans(plans).eta == 4


def test_overrides_recompute_what_depends_on_them() -> None:
    plans = make_test_plans(num_classes=3, rho=4)
    plans["network"]["queries"] = "class_anchored"
    view = Plans(plans).with_overrides(["matching.rho=20"])
    assert view.num_queries == 20 * 3 and view.eta == eta_of(20, plans["matching"]["lambda"])
    assert Plans(plans).num_queries == plans["network"]["num_queries"]  # the original is untouched
    explicit = Plans(plans).with_overrides({"matching.rho": 20, "matching.eta": 1})
    assert explicit.eta == 1 and explicit.num_queries == 60  # an explicit derived value is kept
    learned = Plans(plans).with_overrides(['network.queries="learned"'])
    assert learned.num_queries == 4 * plans["matching"]["M"]
    with pytest.raises(InputError, match="no key 'hidden'"):
        Plans(plans).with_overrides(["network.hidden=3"])

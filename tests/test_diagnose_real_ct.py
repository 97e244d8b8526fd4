"""The real-CT diagnosis: where each labelled organ's voxels go in the segmentation head, per organ."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, SHARED_DATA

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import diagnose_real_ct  # noqa: E402


def test_voxel_shares_and_label_names_map_to_the_models_classes() -> None:
    names = ["liver", "kidney_right"]
    foreign = np.array([[[5, 2, 2, 7, 0]]])  # TotalSegmentator values: 5 liver, 2 kidney_right, 7 pancreas
    mapped = diagnose_real_ct.class_index_map(foreign, {5: "liver", 2: "kidney_right", 7: "pancreas"}, names)
    np.testing.assert_array_equal(mapped, [[[1, 2, 2, 0, 0]]])
    predicted = np.array([[[1, 1, 0, 0, 0]]])
    assert diagnose_real_ct.where_voxels_go(mapped, predicted, names, 2) == {"liver": 0.5, "background": 0.5}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the real example ../shared/data/totalseg_example is absent")
def test_diagnosis_of_the_packaged_model_names_every_labelled_organ(tmp_path: Path) -> None:
    assert diagnose_real_ct.main(["-m", str(REPO_ROOT / "autodetr" / "pretrained" / "phantom-abdomen"),
                                  "--out", str(tmp_path), "--name", "packaged"]) == 0
    result = json.loads((tmp_path / "packaged" / "diagnose_real_ct.json").read_text())
    organs = {organ["name"]: organ for organ in result["organs"]}
    assert len(organs) == 11 and {"liver", "kidney_right", "vertebrae_L1"} <= set(organs)
    for organ in organs.values():
        assert 0.0 <= organ["mask_box_iou"] <= 1.0 and 0.0 <= organ["final_box_iou"] <= 1.0
        assert sum(organ["voxels_go_to"].values()) == pytest.approx(1.0, abs=0.12)
    assert organs["liver"]["final_box_iou"] > 0.3  # the one organ every model so far finds
    assert (tmp_path / "packaged" / "segmentation.png").stat().st_size > 10_000

"""The real-example scorer: per organ, the IoU of the detector's highest-scored box with the labelled box."""
from __future__ import annotations

import numpy as np
import pytest

from autodetr.evaluation.highest_box import OrganScore, box_error, highest_box_ious, summarise


def test_highest_scored_box_per_organ_on_a_tiny_case_with_known_ious() -> None:
    label_map = np.zeros((10, 10, 10), np.uint8)
    label_map[0:4, 0:4, 0:4] = 7  # "liver": 64 voxels, cut by the scan's low end (kept as cut)
    label_map[5:10, 5:10, 5:10] = 3  # "spleen"
    label_map[0:2, 8:10, 0:2] = 9  # a structure the detector does not know
    label_names = {7: "liver", 3: "spleen", 9: "rib_left_7", 4: "kidney_left"}  # kidney named, not in the scan
    boxes = np.asarray([[0, 0, 0, 4, 4, 2],     # liver, half the labelled box: IoU 0.5, score 0.9 (chosen)
                        [0, 0, 0, 4, 4, 4],     # liver, exact but scored lower: not chosen
                        [0, 0, 0, 2, 2, 2]],    # pancreas: a class with no label in the scan, ignored
                       float)
    organs = highest_box_ious(label_map, label_names, ["liver", "spleen", "kidney_left", "pancreas"], boxes,
                              np.asarray([0.9, 0.5, 0.8]), ["liver", "liver", "pancreas"])
    assert [organ.name for organ in organs] == ["liver", "spleen"]
    liver, spleen = organs
    assert liver.iou == pytest.approx(0.5) and liver.score == pytest.approx(0.9) and liver.truth == [0, 0, 0, 4, 4, 4]
    assert spleen.iou == 0.0 and spleen.predicted is None  # no box of the class: IoU 0
    summary = summarise(organs)
    assert summary["mean_iou"] == pytest.approx(0.25) and summary["with_a_box"] == 1 and summary["organs"] == 2
    assert summary["share_iou_0_5"] == pytest.approx(0.5)  # IoU 0.5 counts as found


def test_box_error_tells_a_shifted_box_from_a_short_one() -> None:
    """Offsets in mm along each array axis (spacing z, y, x), sizes as predicted over labelled extent."""
    truth = [0.0, 10.0, 20.0, 10.0, 30.0, 40.0]
    shifted = OrganScore("liver", truth, [2.0, 10.0, 20.0, 12.0, 30.0, 40.0], 0.9, 0.0)
    short = OrganScore("vertebrae_L1", truth, [2.5, 10.0, 20.0, 7.5, 30.0, 40.0], 0.9, 0.0)
    spacing = (3.0, 0.5, 0.5)
    assert box_error(shifted, spacing) == {"centre_offset_mm": [6.0, 0.0, 0.0], "size_ratio": [1.0, 1.0, 1.0]}
    assert box_error(short, spacing) == {"centre_offset_mm": [0.0, 0.0, 0.0], "size_ratio": [0.5, 1.0, 1.0]}
    assert box_error(OrganScore("spleen", truth, None, None, 0.0), spacing) is None

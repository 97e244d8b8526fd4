"""The organ-contact measure: how much of an organ's surface touches a neighbour (fat plane or not)."""
from __future__ import annotations

import sys

import numpy as np

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import organ_contact  # noqa: E402


def _two_blocks(gap_voxels: int) -> np.ndarray:
    label_map = np.zeros((12, 12, 30), dtype=np.int16)
    label_map[3:9, 3:9, 3:9] = 1  # a 6-voxel cube
    label_map[3:9, 3:9, 9 + gap_voxels:9 + gap_voxels + 6] = 2  # its neighbour along x
    return label_map


def test_abutting_organs_touch_and_a_fat_plane_separates_them() -> None:
    spacing = (1.0, 1.0, 1.0)
    touching = organ_contact.surface_contact(_two_blocks(0), spacing, 1, 2, mm=1.0)
    separated = organ_contact.surface_contact(_two_blocks(5), spacing, 1, 2, mm=4.0)
    # 6x6 cube: 152 surface voxels (216 - 4x4x4), of which the 36 of the facing side touch.
    assert touching == 36 / 152
    assert separated == 0.0
    # on a 0.5 mm grid the same gap is 2.5 mm: the facing side lies 3 mm from the neighbour
    assert organ_contact.surface_contact(_two_blocks(5), (0.5, 0.5, 0.5), 1, 2, mm=3.0) == 36 / 152
    assert organ_contact.surface_contact(_two_blocks(0), spacing, 1, 3, mm=4.0) is None


def test_an_organ_at_the_scan_edge_with_its_neighbour_far_away_touches_nothing() -> None:
    label_map = np.zeros((12, 12, 60), dtype=np.int16)
    label_map[0:6, 0:6, 0:6] = 1  # cut by the scan's corner
    label_map[3:9, 3:9, 50:56] = 2
    assert organ_contact.surface_contact(label_map, (1.0, 1.0, 1.0), 1, 2, mm=4.0) == 0.0


def test_summary_skips_cases_without_the_pair() -> None:
    rows = [{"kidney_right-liver": 0.2}, {"kidney_right-liver": None}, {"kidney_right-liver": 0.4}]
    assert organ_contact.summarise(rows)["kidney_right-liver"] == "0.30 (0.20-0.40), n=2"
    assert organ_contact.summarise(rows)["gallbladder-liver"] == "-"

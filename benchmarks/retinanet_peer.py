"""Reusable pieces of `bench_vs_retinanet.py` that are ours: the box convention between MONAI and autodetr,
anchor shapes from the training boxes, the held-out cases preprocessed as autodetr_predict does, and the
peer's raw boxes turned into autodetr prediction files (one box per class, mapped back to the original image).

MONAI's RetinaNet itself runs only in its own virtual environment (`benchmarks/peers/retinanet_monai.py`,
set up by `benchmarks/peers/setup_retinanet.sh`); that script imports this module for the box convention and
the anchor shapes, so everything at this module's top level needs numpy alone. The functions that need
autodetr import it inside, and run only in the project's environment; the fast test
`tests/test_bench_vs_retinanet.py` imports this module without MONAI.

Box convention. autodetr's boxes on a preprocessed array `[C, D, H, W]` are corner boxes
`(z1, y1, x1, z2, y2, x2)` in voxel edges, half-open (voxels 3..5 -> 3, 6), where z, y, x name the array's
axes 0, 1, 2. MONAI's detection boxes are `"xyzxyz"` (its `StandardMode`, `TO_REMOVE = 0`: also half-open
edges), where x, y, z name the spatial axes of a tensor `[C, *spatial]` in order: its anchor generator
(`AnchorGenerator.grid_anchors`, indexing "ij") places coordinate k along spatial axis k, and
`convert_box_to_mask` fills `mask[x1:x2, y1:y2, z1:z2]`. So MONAI's x is autodetr's z: the six numbers are
the same in the same order (`MONAI_AXIS_OF_ARRAY_AXIS`), only the names differ; the conversion functions
keep the mapping in one place and check the shapes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
#: The peer's training / prediction script (runs with the peer's Python).
PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "retinanet_monai.py"
SETUP_SCRIPT = Path(__file__).resolve().parent / "peers" / "setup_retinanet.sh"
#: The peer's Python, in the virtual environment `setup_retinanet.sh` makes.
DEFAULT_PEER_PYTHON = REPOSITORY / ".venv-retinanet" / "bin" / "python"
#: MONAI's box coordinate (x, y, z of "xyzxyz") that lies along each array axis (0, 1, 2) of `[C, D, H, W]`.
MONAI_AXIS_OF_ARRAY_AXIS = (0, 1, 2)
#: What the peer writes per held-out case (`<case>.json` in its raw prediction folder).
RAW_BOX_CONVENTION = ("preprocessed voxels (z1, y1, x1, z2, y2, x2) of <case>.npz, half-open edges, "
                      "autodetr's convention")
RAW_KEYS = ("case", "image_shape", "boxes", "scores", "classes")
PREDICTION_SOURCE = "MONAI RetinaNet (benchmarks/peers/retinanet_monai.py): highest-scored box per class"


# ----------------------------------------------------------------------------------------------------
# box convention and anchor shapes (numpy only: the peer script imports these)
# ----------------------------------------------------------------------------------------------------

def _corner_order() -> list[int]:
    """Column k of an autodetr box -> its column in a MONAI box."""
    axes = list(MONAI_AXIS_OF_ARRAY_AXIS)
    return axes + [a + 3 for a in axes]


def autodetr_to_monai(boxes: Any) -> np.ndarray:
    """autodetr corner boxes `(z1, y1, x1, z2, y2, x2)` (array axes 0, 1, 2) -> MONAI `xyzxyz` `[N, 6]` float32."""
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    monai = np.empty_like(array)
    monai[:, _corner_order()] = array
    return monai.astype(np.float32)


def monai_to_autodetr(boxes: Any) -> np.ndarray:
    """MONAI `xyzxyz` boxes -> autodetr corner boxes `(z1, y1, x1, z2, y2, x2)` `[N, 6]` float64."""
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    return array[:, _corner_order()]


def kmeans_box_shapes(sizes: Any, k: int, iterations: int = 100) -> np.ndarray:
    """k-means of box sizes `[N, 3]` in log space (a ratio error weighs the same for small and large organs),
    started at the volume quantiles, so the result is deterministic. Returns at most `k` centres `[k', 3]`
    (fewer when there are fewer distinct sizes), ordered by volume."""
    logs = np.log(np.maximum(np.asarray(sizes, dtype=np.float64).reshape(-1, 3), 1e-3))
    if not len(logs) or k < 1:
        raise ValueError(f"k-means of {len(logs)} box sizes into {k} shapes")
    k = min(k, len(np.unique(logs, axis=0)))
    order = np.argsort(logs.sum(1), kind="mergesort")
    centres = logs[order[((np.arange(k) + 0.5) * len(order) / k).astype(int)]]
    for _ in range(iterations):
        nearest = np.argmin(((logs[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        moved = np.stack([logs[nearest == j].mean(0) if np.any(nearest == j) else centres[j] for j in range(k)])
        if np.allclose(moved, centres):
            break
        centres = moved
    return np.exp(centres[np.argsort(centres.sum(1), kind="mergesort")])


def anchor_base_shapes(sizes: Any, k: int, feature_map_scales: Sequence[float]) -> list[list[float]]:
    """`base_anchor_shapes` of MONAI's `AnchorGeneratorWithAnchorShape` from the training boxes' sizes (MONAI's
    detection tutorial: anchor shapes from the data's box sizes; nnDetection plans its anchors from the data
    too): the `k` k-means centres divided by the geometric mean of the feature-map scales, so the middle level's
    anchors are the cluster centres and the finer / coarser levels cover smaller / larger organs. In the
    array's axis order, like the boxes."""
    middle = float(np.exp(np.mean(np.log(np.asarray(feature_map_scales, dtype=np.float64)))))
    return [[round(float(v), 2) for v in shape] for shape in kmeans_box_shapes(sizes, k) / middle]


# ----------------------------------------------------------------------------------------------------
# project side: held-out cases in, prediction files out
# ----------------------------------------------------------------------------------------------------

def highest_box_per_class(boxes: Any, scores: Any, classes: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The highest-scored detection of each class (one organ per class, as autodetr_predict keeps with
    `--max-per-class 1`), by `autodetr.evaluation.highest_box.highest_scored`; ordered by class."""
    from autodetr.evaluation.highest_box import highest_scored

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(classes)} classes")
    best = highest_scored(scores, classes.tolist())
    keep = np.asarray([best[c] for c in sorted(best)], dtype=np.int64)
    return boxes[keep], scores[keep], classes[keep]


def preprocess_held_out(images_folder: Path, plans: Mapping[str, Any], output_folder: Path,
                        num_processes: int = 1) -> list[str]:
    """Read and preprocess every case of `images_folder` exactly as `autodetr_predict` does (its
    `CasePrefetcher`: same reader, `preprocess_image` with the model's plans) and write `<case>.npz` (`image`
    `[C, d, h, w]` float32) and `<case>.json` (`restore`: what maps boxes back, `body_found`, `source`) for the
    peer to predict on. Returns the case ids; a case that cannot be read, or a folder without images
    (`discover_cases`), raises InputError."""
    from autodetr.atomic_io import write_json, write_npz
    from autodetr.errors import InputError
    from autodetr.inference.inputs import discover_cases
    from autodetr.inference.predict_api import CasePrefetcher
    from autodetr.plans import Plans

    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    written = []
    for case, prepared in CasePrefetcher(discover_cases(images_folder, Plans.of(plans).in_channels), plans, num_processes):
        if isinstance(prepared, str):
            raise InputError(f"{case.case_id}: {prepared}")
        write_npz(output_folder / f"{case.case_id}.npz", image=prepared.image.astype(np.float32))
        write_json(output_folder / f"{case.case_id}.json", {"case_id": case.case_id, "restore": prepared.restore.to_json(),
                                                            "body_found": prepared.body_found, "source": case.source})
        written.append(case.case_id)
    return written


def read_raw_prediction(path: Path) -> dict[str, Any]:
    """One raw peer file (`RAW_KEYS`), its lists as arrays; ValueError naming the file when malformed."""
    content = json.loads(Path(path).read_text())
    missing = [key for key in RAW_KEYS if key not in content]
    if missing:
        raise ValueError(f"{path}: not a raw peer prediction (missing {missing})")
    boxes = np.asarray(content["boxes"], dtype=np.float64).reshape(-1, 6)
    scores = np.asarray(content["scores"], dtype=np.float64).reshape(-1)
    classes = np.asarray(content["classes"], dtype=np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(classes) or not np.all(np.isfinite(boxes)):
        raise ValueError(f"{path}: {len(boxes)} boxes, {len(scores)} scores, {len(classes)} classes (or non-finite boxes)")
    return dict(content, boxes=boxes, scores=scores, classes=classes)


def raw_to_prediction_file(raw: Mapping[str, Any], case_json: Mapping[str, Any], plans: Mapping[str, Any],
                           prediction_file: Path) -> int:
    """Write the autodetr prediction file of one case from the peer's raw boxes (preprocessed voxels, class
    indices 1..C): the highest-scored box per class, mapped back to the original image as autodetr_predict
    maps its own (`RestoreInfo.boxes_in_original`), with world corners. Returns the number of detections."""
    from autodetr.inference.outputs import write_case_prediction
    from autodetr.plans import Plans
    from autodetr.preprocessing.restore import RestoreInfo

    restore = RestoreInfo.from_json(case_json["restore"])
    if [int(s) for s in raw["image_shape"]] != [int(s) for s in restore.preprocessed_shape]:
        raise ValueError(f"case {raw['case']}: the peer predicted on {list(raw['image_shape'])} voxels, "
                         f"the case was preprocessed to {restore.preprocessed_shape}")
    planned = Plans.of(plans)
    known = np.isin(raw["classes"], list(planned.label_values))
    boxes, scores, classes = highest_box_per_class(raw["boxes"][known], raw["scores"][known], raw["classes"][known])
    label_values = np.asarray([planned.label_values[int(c)] for c in classes], dtype=np.int64)
    extra = {"source": PREDICTION_SOURCE, "raw_detections": int(len(raw["boxes"])),
             "body_found": bool(case_json.get("body_found", True))}
    write_case_prediction(Path(prediction_file), str(raw["case"]), restore.boxes_in_original(boxes), scores,
                          label_values, planned.class_names, restore.geometry, extra)
    return int(len(boxes))


def raw_to_prediction_files(raw_folder: Path, cases_folder: Path, plans: Mapping[str, Any],
                            prediction_folder: Path) -> dict[str, int]:
    """`raw_to_prediction_file` for every case of `cases_folder` (`preprocess_held_out`'s output): a case
    without a raw file is an error. Returns {case: number of detections}."""
    prediction_folder = Path(prediction_folder)
    prediction_folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for case_file in sorted(Path(cases_folder).glob("*.json")):
        case_json = json.loads(case_file.read_text())
        case = str(case_json["case_id"])
        raw_file = Path(raw_folder) / f"{case}.json"
        if not raw_file.is_file():
            raise FileNotFoundError(f"{raw_file}: the peer wrote no prediction for case {case}")
        written[case] = raw_to_prediction_file(read_raw_prediction(raw_file), case_json, plans,
                                               prediction_folder / f"{case}.json")
    if not written:
        raise FileNotFoundError(f"{cases_folder}: no preprocessed held-out cases")
    return written

"""Training augmentation: the left-right mirror keeps lateral labels anatomically correct, targets follow
the augmented label map, batches are reproducible."""
from __future__ import annotations

import numpy as np
import pytest

from autodetr.boxes import boxes_from_label_map, denormalise_centre
from autodetr.training.augmentation import (
    DetectionTargetsTransform,
    LateralMirrorTransform,
    SpatialTransformPerSample,
    affine_resample,
    training_transforms,
)
from autodetr.training.dataset import left_right_axis, pad_to_input

KIDNEY_LEFT, KIDNEY_RIGHT, LIVER = 1, 2, 3
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def make_plans(transpose_forward=(0, 1, 2), input_size=(16, 20, 24)) -> dict:
    return {
        "input_size": list(input_size),
        "transpose_forward": list(transpose_forward),
        "classes": [{"index": 1, "label_value": 1, "name": "kidney_left"},
                    {"index": 2, "label_value": 2, "name": "kidney_right"},
                    {"index": 3, "label_value": 3, "name": "liver"}],
        "lateral_pairs": [[KIDNEY_LEFT, KIDNEY_RIGHT]],
        "training": {"augmentation": {}},
    }


def lps_volume(shape=(16, 20, 24)) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) in original (z, y, x) order, LPS identity direction: x index grows towards the
    patient's LEFT. kidney_left sits at high x, kidney_right at low x, the liver at low x (patient right)."""
    labels = np.zeros(shape, dtype=np.int16)
    image = np.full(shape, -1.0, dtype=np.float32)
    z, y, x = shape
    labels[4:10, 8:12, x - 7:x - 3] = KIDNEY_LEFT
    labels[5:11, 8:12, 3:7] = KIDNEY_RIGHT
    labels[2:6, 2:7, 2:9] = LIVER
    image[labels == KIDNEY_LEFT] = 2.0
    image[labels == KIDNEY_RIGHT] = 1.0
    image[labels == LIVER] = 0.5
    return image, labels


def patient_side(labels: np.ndarray, value: int, axis: int) -> str:
    """'left' if the class lies in the high half of `axis` (patient left for an LPS x axis), else 'right'."""
    coordinates = np.nonzero(labels == value)[axis]
    return "left" if coordinates.mean() >= labels.shape[axis] / 2 else "right"


@pytest.mark.parametrize("transpose_forward", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_mirror_keeps_lateral_labels_on_their_side(transpose_forward) -> None:
    image, labels = lps_volume()
    image_t = image.transpose(transpose_forward)
    labels_t = labels.transpose(transpose_forward)
    axis = left_right_axis(transpose_forward, IDENTITY)
    assert axis == list(transpose_forward).index(2)
    assert patient_side(labels_t, KIDNEY_LEFT, axis) == "left"
    batch = {"data": image_t[None, None].copy(), "seg": labels_t[None, None].astype(np.float32),
             "lr_axis": np.asarray([axis])}
    mirror = LateralMirrorTransform([[KIDNEY_LEFT, KIDNEY_RIGHT]], num_classes=3, p_per_sample=1.0)  # flip forced on
    out = mirror(**batch)
    assert out["mirrored"].tolist() == [True]
    seg = out["seg"][0, 0]
    # the image is flipped along the left-right axis ...
    np.testing.assert_array_equal(out["data"][0, 0], np.flip(image_t, axis=axis))
    # ... and the voxels labelled kidney_left are still on the patient's left, kidney_right on the right
    assert patient_side(seg, KIDNEY_LEFT, axis) == "left"
    assert patient_side(seg, KIDNEY_RIGHT, axis) == "right"
    # the kidney_left voxels are the mirrored kidney_right voxels (whose image intensity was 1.0)
    assert np.all(out["data"][0, 0][seg == KIDNEY_LEFT] == 1.0)
    # a non-lateral organ just moves (situs inversus), keeping its label
    assert (seg == LIVER).sum() == (labels == LIVER).sum()
    assert patient_side(seg, LIVER, axis) == "left"


def test_left_right_axis_follows_the_direction_matrix() -> None:
    # index axis y of the image points along world x (a permuted direction): array axis 1 is left-right
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    assert left_right_axis([0, 1, 2], direction) == 1
    assert left_right_axis([1, 0, 2], direction) == 0
    assert left_right_axis([0, 1, 2], None) == 2


def test_boxes_after_augmentation_match_the_augmented_seg() -> None:
    plans = make_plans()
    plans["training"]["augmentation"] = {"p_rotation": 1.0, "p_scale": 1.0, "p_elastic": 0.5, "p_mirror": 0.5}
    transform = training_transforms(plans)
    image, labels = lps_volume((14, 18, 20))
    padded, padded_seg = pad_to_input(image[None], labels, plans["input_size"])
    assert padded.shape == (1, 16, 20, 24) and padded[0, 15, 19, 23] == image.min()
    for seed in range(4):
        np.random.seed(seed)
        batch = {"data": np.stack([padded, padded]), "seg": np.stack([padded_seg[None]] * 2),
                 "lr_axis": np.asarray([2, 2])}
        out = transform(**batch)
        assert out["data"].shape == (2, 1, 16, 20, 24) and out["seg"].shape == (2, 16, 20, 24)
        for sample in range(2):
            expected_boxes, expected_values = boxes_from_label_map(out["seg"][sample])
            np.testing.assert_array_equal(out["target_labels"][sample], expected_values)
            corners = denormalise_centre(out["target_boxes"][sample], plans["input_size"])
            np.testing.assert_allclose(corners, expected_boxes, atol=1e-4)
            assert out["target_boxes"][sample].dtype == np.float32


def test_rotation_and_scaling_resample_as_batchgenerators_does() -> None:
    """The affine path maps every output voxel to the input position that batchgenerators' rotated and
    scaled coordinate grid gives it (the mapping the trainer has always used), for the image (linear, the
    sample's minimum outside) and the label map (nearest, 0 outside)."""
    from batchgenerators.augmentations.utils import create_zero_centered_coordinate_mesh, rotate_coords_3d, scale_coords
    from scipy.ndimage import map_coordinates

    image, labels = lps_volume((14, 18, 20))
    image = image + np.random.default_rng(0).normal(0, 0.1, image.shape).astype(np.float32)
    patch = (16, 20, 24)
    transform = SpatialTransformPerSample(patch, do_rotation=True, angle_x=(-0.4, 0.4), angle_y=(-0.1, 0.1),
                                          angle_z=(-0.1, 0.1), p_rot_per_sample=1.0, do_scale=True, scale=(0.85, 1.15),
                                          p_scale_per_sample=1.0, order_data=1)
    for seed in range(3):
        np.random.seed(seed)
        elastic, matrix = transform._draw()
        assert not elastic and matrix is not None and not np.allclose(matrix, np.identity(3))
        np.random.seed(seed)
        np.random.uniform()  # the rotation draw
        angles = [np.random.uniform(-0.4, 0.4), np.random.uniform(-0.1, 0.1), np.random.uniform(-0.1, 0.1)]
        np.random.uniform()  # the scale draw
        factor = np.random.uniform(0.85, 1) if np.random.random() < 0.5 else np.random.uniform(1, 1.15)
        coords = scale_coords(rotate_coords_3d(create_zero_centered_coordinate_mesh(patch), *angles), factor)
        for axis in range(3):
            coords[axis] += image.shape[axis] / 2.0 - 0.5
        expected_image = map_coordinates(image.astype(float), coords, order=1, mode="constant", cval=float(image.min()))
        expected_labels = map_coordinates(labels.astype(float), coords, order=0, mode="constant", cval=0.0)
        np.testing.assert_allclose(affine_resample(image[None], matrix, patch, 1, [float(image.min())])[0], expected_image, atol=1e-4)
        assert np.mean(affine_resample(labels[None], matrix, patch, 0, [0.0])[0] != expected_labels) < 1e-3  # ties at exact halves


@pytest.mark.parametrize("order", [0, 1])
def test_affine_resample_equals_scipy_inside_and_outside_the_input(order: int) -> None:
    """The torch resampler gives scipy's `affine_transform` (mode constant) for random affine maps that
    also reach outside the input: same values inside, each channel's constant outside."""
    from scipy import ndimage

    rng = np.random.default_rng(order)
    for _ in range(4):
        in_shape, out_shape = tuple(rng.integers(8, 20, 3)), tuple(rng.integers(8, 20, 3))
        images = np.stack([rng.normal(size=in_shape), rng.integers(0, 5, in_shape)]).astype(np.float32)
        matrix = 1.3 * np.identity(3) + rng.normal(0, 0.2, (3, 3))  # reaches beyond the input
        offset = (np.asarray(in_shape) - 1) / 2 - matrix @ ((np.asarray(out_shape) - 1) / 2)
        cvals = [-3.0, 0.0]
        expected = [ndimage.affine_transform(channel, matrix, offset=offset, output_shape=out_shape, output=np.float32,
                                             order=order, mode="constant", cval=cval) for channel, cval in zip(images, cvals)]
        found = affine_resample(images, matrix, out_shape, order, cvals)
        assert found.shape == (2, *out_shape) and found.dtype == np.float32
        assert (found[0] == -3.0).any()  # some of the output lies outside the input
        for channel in range(2):
            np.testing.assert_allclose(found[channel], expected[channel], atol=1e-4)


def test_samples_without_a_spatial_draw_pass_through_untouched() -> None:
    transform = SpatialTransformPerSample((16, 20, 24), do_rotation=True, angle_x=(-0.2, 0.2), angle_y=(0.0, 0.0),
                                          angle_z=(0.0, 0.0), p_rot_per_sample=0.0, do_scale=True, scale=(0.9, 1.1),
                                          p_scale_per_sample=0.0, do_elastic_deform=True, alpha=(0.0, 100.0),
                                          sigma=(9.0, 13.0), p_el_per_sample=0.0, order_data=1)
    image, labels = lps_volume()
    batch = {"data": image[None, None].copy(), "seg": labels[None, None].copy(),
             "valid_boxes": np.asarray([[0.0, 0.0, 0.0, 12.0, 20.0, 24.0]]), "exact_boxes": [("boxes", "classes")]}
    out = transform(**batch)
    np.testing.assert_array_equal(out["data"][0, 0], image)
    np.testing.assert_array_equal(out["seg"][0, 0], labels)
    np.testing.assert_array_equal(out["valid_boxes"][0], [0, 0, 0, 12, 20, 24])
    assert out["exact_boxes"][0] == ("boxes", "classes")


def test_unmoved_samples_keep_the_exact_boxes_moved_ones_use_the_label_map() -> None:
    """Preprocessing's exact boxes (fractional voxel corners) are the targets of a sample the spatial
    transform left in place, mirrored with it; a rotated / scaled sample's targets follow its label map."""
    plans = make_plans()
    image, labels = lps_volume()
    found, values = boxes_from_label_map(labels)
    exact = found + np.asarray([0.3, -0.2, 0.4, -0.3, 0.25, -0.1])  # sub-voxel edges
    cases = {"still": ({}, False), "mirrored": ({"p_mirror": 1.0}, True), "moved": ({"p_rotation": 1.0, "p_scale": 1.0}, False)}
    for name, (options, mirrored) in cases.items():
        plans["training"]["augmentation"] = {"p_gamma": 0.0, "p_noise": 0.0, "p_brightness": 0.0, "p_contrast": 0.0,
                                             "p_rotation": 0.0, "p_scale": 0.0, "p_elastic": 0.0, **options}
        np.random.seed(0)
        batch = {"data": image[None, None].copy(), "seg": labels[None, None].copy(), "lr_axis": np.asarray([2]),
                 "exact_boxes": [(exact[::-1].copy(), values[::-1].copy())]}
        out = training_transforms(plans)(**batch)
        corners = denormalise_centre(out["target_boxes"][0], plans["input_size"])
        if name == "moved":
            expected, expected_values = boxes_from_label_map(out["seg"][0])
        elif mirrored:
            width = labels.shape[2]
            expected = exact.copy()
            expected[:, 2], expected[:, 5] = width - exact[:, 5], width - exact[:, 2]
            expected = expected[[1, 0, 2]]  # kidney_left and kidney_right swap classes and sides
            expected_values = values
        else:
            expected, expected_values = exact, values
        np.testing.assert_array_equal(out["target_labels"][0], expected_values, err_msg=name)
        np.testing.assert_allclose(corners, expected, atol=1e-4, err_msg=name)


def test_field_of_view_crop_shortens_the_scan_and_its_targets() -> None:
    """The cut slices become padding, the valid region ends where the scan now ends, and an organ the cut
    reaches gets the box of what is left of it (from the label map), the others their exact boxes."""
    plans = make_plans()
    plans["training"]["augmentation"] = {"p_gamma": 0.0, "p_noise": 0.0, "p_brightness": 0.0, "p_contrast": 0.0,
                                         "p_rotation": 0.0, "p_scale": 0.0, "p_elastic": 0.0, "p_mirror": 0.0,
                                         "p_fov_crop": 1.0, "fov_crop_fraction": [0.45, 0.0, 0.0]}
    image, labels = lps_volume()
    found, values = boxes_from_label_map(labels)
    exact = found + np.asarray([0.25, 0.0, 0.0, -0.25, 0.0, 0.0])
    cuts = set()
    for seed in range(12):
        np.random.seed(seed)
        batch = {"data": image[None, None].copy(), "seg": labels[None, None].copy(), "lr_axis": np.asarray([2]),
                 "valid_boxes": np.asarray([[0, 0, 0, *labels.shape]], dtype=np.float64),
                 "exact_boxes": [(exact.copy(), values.copy())]}
        out = training_transforms(plans)(**batch)
        low, high = out["valid_boxes"][0][[0, 3]] * plans["input_size"][0]
        assert 0 <= low < high <= labels.shape[0] and high - low >= 0.1 * labels.shape[0]
        assert np.all(out["data"][0, 0, : int(low)] == image.min()) and np.all(out["seg"][0, int(high):] == 0)
        np.testing.assert_array_equal(out["data"][0, 0, int(low):int(high)], image[int(low):int(high)])
        corners = denormalise_centre(out["target_boxes"][0], plans["input_size"])
        cut = bool(np.any(exact[:, 0] < low) or np.any(exact[:, 3] > high))
        cuts.add(cut)
        expected = boxes_from_label_map(out["seg"][0])[0] if cut else exact
        np.testing.assert_allclose(corners, expected, atol=1e-4)
    assert cuts == {True, False}


def test_shift_moves_the_case_inside_its_padding_with_its_targets() -> None:
    """A shifted case keeps every voxel of its body (only padding is cut off), its valid region and its
    exact boxes move by the same offset, and the offsets cover the padding's range (none leaves the input)."""
    plans = make_plans(input_size=(24, 28, 32))
    plans["training"]["augmentation"] = {"p_gamma": 0.0, "p_noise": 0.0, "p_brightness": 0.0, "p_contrast": 0.0,
                                         "p_rotation": 0.0, "p_scale": 0.0, "p_elastic": 0.0, "p_mirror": 0.0,
                                         "p_shift": 1.0}
    image, labels = lps_volume()
    found, values = boxes_from_label_map(labels)
    exact = found + np.asarray([0.25, 0.0, 0.0, -0.25, 0.0, 0.0])
    padded_image, padded_labels = pad_to_input(image[None], labels, plans["input_size"], "case.npz")
    offsets = []
    for seed in range(20):
        np.random.seed(seed)
        batch = {"data": padded_image[None].copy(), "seg": padded_labels[None, None].astype(np.float32),
                 "lr_axis": np.asarray([2]), "valid_boxes": np.asarray([[0, 0, 0, *labels.shape]], dtype=np.float64),
                 "exact_boxes": [(exact.copy(), values.copy())]}
        out = training_transforms(plans)(**batch)
        low = np.rint(out["valid_boxes"][0][:3] * plans["input_size"]).astype(int)
        high = np.rint(out["valid_boxes"][0][3:] * plans["input_size"]).astype(int)
        np.testing.assert_array_equal(high - low, labels.shape)
        assert np.all(low >= 0) and np.all(high <= plans["input_size"])
        inside = tuple(slice(a, b) for a, b in zip(low, high))
        np.testing.assert_array_equal(out["data"][0, 0][inside], image)
        np.testing.assert_array_equal(out["seg"][0][inside], labels)
        assert out["data"][0, 0].sum() == pytest.approx(padded_image.sum(), rel=1e-5)  # only padding was cut off
        corners = denormalise_centre(out["target_boxes"][0], plans["input_size"])
        np.testing.assert_allclose(corners, exact + np.concatenate([low, low]), atol=1e-4)
        offsets.append(low)
    offsets = np.asarray(offsets)
    assert np.all(offsets.max(0) > 0) and np.all(offsets.min(0) < np.subtract(plans["input_size"], labels.shape))


def test_targets_handle_absent_and_one_voxel_organs() -> None:
    seg = np.zeros((1, 1, 8, 8, 8), dtype=np.float32)
    seg[0, 0, 3, 4, 5] = 2
    out = DetectionTargetsTransform((8, 8, 8), num_classes=3)(data=np.zeros((1, 1, 8, 8, 8), np.float32), seg=seg)
    assert out["target_labels"][0].tolist() == [2]
    np.testing.assert_allclose(denormalise_centre(out["target_boxes"][0], (8, 8, 8)), [[3, 4, 5, 4, 5, 6]])
    empty = DetectionTargetsTransform((8, 8, 8), 3)(data=np.zeros((1, 1, 8, 8, 8), np.float32),
                                                    seg=np.zeros((1, 1, 8, 8, 8), np.float32))
    assert empty["target_boxes"][0].shape == (0, 6) and empty["target_labels"][0].shape == (0,)


def test_batches_depend_only_on_seed_epoch_iteration(tmp_path) -> None:
    """The same (seed, epoch, iteration) gives the same augmented batch, with any number of workers."""
    from autodetr.atomic_io import write_json, write_npz
    from autodetr.training.dataset import DetectionDataLoader, case_files

    plans = make_plans()
    plans["training"]["augmentation"] = {key: 1.0 for key in ("p_rotation", "p_scale", "p_elastic", "p_mirror", "p_gamma",
                                                              "p_noise", "p_brightness", "p_contrast")}
    image, labels = lps_volume((14, 18, 20))
    for case in ("a", "b", "c"):
        write_npz(tmp_path / f"{case}.npz", image=image[None], seg=labels, boxes=np.zeros((0, 6), np.float32),
                  classes=np.zeros(0, np.int64))
        write_json(tmp_path / f"{case}.json", {"restore": {"geometry": {"direction": list(IDENTITY)}}})
    files = case_files(tmp_path, ["a", "b", "c"])
    transform = training_transforms(plans)

    def batches(start, workers, thread):
        loader = DetectionDataLoader(files, 2, plans["input_size"], {}, seed=1, epoch=4, start=start, stop=6,
                                     num_workers=workers)
        loader.set_thread_id(thread)
        out = []
        while True:
            try:
                out.append(transform(**next(loader)))
            except StopIteration:
                return out

    single = batches(0, 1, 0)
    assert [b["iteration"] for b in single] == list(range(6))
    resumed = batches(3, 1, 0)
    for a, b in zip(single[3:], resumed):
        np.testing.assert_array_equal(a["data"], b["data"])
    second_worker = batches(0, 2, 1)
    assert [b["iteration"] for b in second_worker] == [1, 3, 5]
    for b in second_worker:
        np.testing.assert_array_equal(single[b["iteration"]]["data"], b["data"])
        np.testing.assert_array_equal(single[b["iteration"]]["seg"], b["seg"])


def test_case_cache_reads_a_case_once_within_its_budget(tmp_path, monkeypatch) -> None:
    """The data loader inflates each npz once while its byte budget lasts; kept arrays are read-only (a
    transform writing into them would alter later batches), and a case over the budget is read every time."""
    from autodetr.atomic_io import write_npz
    from autodetr.training import dataset

    image, labels = lps_volume((14, 18, 20))
    path = tmp_path / "a.npz"
    write_npz(path, image=image[None], seg=labels, boxes=np.zeros((0, 6), np.float32), classes=np.zeros(0, np.int64))
    reads = []
    original = dataset.load_case
    monkeypatch.setattr(dataset, "load_case", lambda p: reads.append(p) or original(p))
    cache = dataset.CaseCache()
    first, second = cache.load(path), cache.load(path)
    assert len(reads) == 1 and second is first
    np.testing.assert_array_equal(first["image"][0], image)
    with pytest.raises(ValueError):
        first["image"][0, 0, 0, 0] = 1.0
    small = dataset.CaseCache(max_bytes=image.nbytes // 2)
    small.load(path), small.load(path)
    assert len(reads) == 3 and small.used_bytes == 0

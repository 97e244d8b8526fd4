"""Training augmentation (batchgenerators) and the detection targets made from the augmented labels.

Pipeline (`training_transforms`), on whole padded volumes (patch = the plan's `input_size`, no crop):

0. Field of view (`FieldOfViewCropTransform`): with probability `p_fov_crop` a sample loses a random part
   of its scan range, up to `fov_crop_fraction[a]` of its extent at each end of axis a (by default only
   the first preprocessed axis, the slice direction of a CT): the cut-off slices become padding and the
   valid region shrinks with them. Real scans start and stop at different heights, and a detector whose
   anchors live in the valid region must not learn where organs sit relative to the scan's ends: on the
   training benchmark's held-out phantoms, removing 42 mm from the top of a scan moved the predicted
   kidneys and pancreas by 3 to 7 mm without this. Off by default: in 20 CPU minutes it cost more than it
   gave (fold 0, p 0.5: mAP 0.269 against 0.277 over the 4 validation and 12 held-out phantoms).
0b. Position (`ShiftTransform`): with probability `p_shift` a sample is moved by a random whole number of
   voxels inside its padded input (per axis uniformly from 0 to the padding at the high end), so the
   body and its organs do not always sit at the same input coordinates: the random patch position of
   nnU-Net's and nnDetection's training, for whole-body inputs. The valid region and the exact boxes
   move with it. Inference keeps the body at the low corner, one of the positions training sees.
1. Spatial (`SpatialTransformPerSample`: the draws and mapping of batchgenerators' `augment_spatial`,
   `random_crop=False`, border mode constant with each sample's own minimum, i.e. the padded background;
   untouched samples pass through, rotated / scaled ones are resampled with one affine transform): rotation (in the
   plane of axes 1 and 2 -- the axial plane, as the planner puts the coarsest axis first -- up to
   `rotation_degrees`, about the other two axes up to `rotation_degrees_out_of_plane`), isotropic
   scaling in `scale_range`, elastic deformation (`elastic_alpha`, `elastic_sigma`; the planner turns it
   off, as nnU-Net v2's default trainer), each with its probability. Image interpolation is linear (`order_data` 1: cubic costs about twice as much on a CPU
   and adds little at these resolutions); the label map uses nearest-neighbour interpolation.
2. Left-right mirror with label swap (`LateralMirrorTransform`): with probability `p_mirror` the volume
   is flipped along the case's left-right axis (the image x axis, found through `transpose_forward`
   and the image direction: `dataset.left_right_axis`) AND the classes of every pair of
   the plan's `lateral_pairs` (kidney_left / kidney_right, ...) are swapped in the label map, so a voxel
   labelled kidney_left is always on the patient's left. Non-lateral organs change sides (the liver
   ends up on the left: a situs-inversus body), which is why the default probability is modest.
   The other axes are never mirrored: a head-foot or front-back flip makes a body the detector never
   sees at test time, and an organ's position is one of its strongest cues.
3. Intensity: `GammaTransform`, `GaussianNoiseTransform`, `BrightnessMultiplicativeTransform`,
   `ContrastAugmentationTransform` (nnU-Net-like probabilities, modest ranges).
4. Targets (`DetectionTargetsTransform`): a sample the spatial transform left as it was (its label map
   unchanged) keeps the exact boxes preprocessing computed on the original grid (`exact_boxes`, mirrored
   with the volume); for the others the boxes are recomputed from the AUGMENTED label map with
   `autodetr.boxes.boxes_from_label_map` (one box per class present). A box read from the resampled label
   map is off by about a quarter voxel per side (1.3 mm on the CPU plan) and slightly too small on
   average; training on it would teach the detector that error. Boxes are normalised to the input size.
   Organs cut by the field of view, one-voxel organs and organs that vanish after augmentation are
   normal (a vanished organ simply has no target). For nnDetection instance datasets the preprocessed
   `seg` holds class indices, so instances of one class merge into one box here -- acceptable for
   organs (one instance per class); instance-level targets would need the instance map.

All parameters live in the plan's `training.augmentation` (defaults `autodetr.plans.DEFAULT_AUGMENTATION`, written into
the fold's plans.json, overridable with `--set training.augmentation.p_mirror=0`). Every transform uses
numpy's global RNG, which the data loader seeds per batch (see `dataset.py`).
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from batchgenerators.augmentations.spatial_transformations import augment_spatial
from batchgenerators.augmentations.utils import (
    create_matrix_rotation_x_3d,
    create_matrix_rotation_y_3d,
    create_matrix_rotation_z_3d,
)
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform

from autodetr.boxes import boxes_from_label_map, mirror_boxes, normalise_corners
from autodetr.plans import Plans



def augmentation_options(plans: dict) -> dict[str, Any]:
    """`DEFAULT_AUGMENTATION` updated with the plan's `training.augmentation`."""
    return Plans.of(plans).augmentation


class FieldOfViewCropTransform(AbstractTransform):
    """Shorten each sample's scan range at random (step 0 of the module docstring): per axis a with
    `fractions[a] > 0`, up to that fraction of the valid extent is cut at each end (uniformly), the cut
    voxels set to the sample's minimum (the padding value) and 0 in the label map, and `valid_boxes`
    shrunk to what is left. Needs `valid_boxes`; a sample whose exact boxes reach into a cut part takes
    its boxes from the label map."""

    def __init__(self, p_per_sample: float, fractions: Sequence[float]) -> None:
        self.p_per_sample = float(p_per_sample)
        self.fractions = [min(max(float(f), 0.0), 0.45) for f in fractions]

    def __call__(self, **batch: Any) -> dict:
        data, seg, valid = batch["data"], batch.get("seg"), batch.get("valid_boxes")
        if valid is None:
            return batch
        exact = batch.get("exact_boxes")
        for sample in range(data.shape[0]):
            if not np.random.uniform() < self.p_per_sample:
                continue
            box = valid[sample]
            for axis, fraction in enumerate(self.fractions):
                if fraction <= 0:
                    continue
                extent = box[axis + 3] - box[axis]
                low = box[axis] + int(np.floor(np.random.uniform(0, fraction) * extent))
                high = box[axis + 3] - int(np.floor(np.random.uniform(0, fraction) * extent))
                for region in (slice(0, int(low)), slice(int(high), None)):
                    index = (slice(None),) * (axis + 1) + (region,)
                    data[sample][index] = data[sample].min()
                    if seg is not None:
                        seg[sample][index] = 0
                box[axis], box[axis + 3] = low, high
            if exact is not None and exact[sample] is not None:
                corners = exact[sample][0]
                if np.any(corners[:, :3] < box[:3] - 1e-6) or np.any(corners[:, 3:] > box[3:] + 1e-6):
                    exact[sample] = None  # an organ was cut: its box is the visible part, from the label map
        return batch


class ShiftTransform(AbstractTransform):
    """Move each sample inside its padded input by a random voxel offset (step 0b of the module docstring):
    per axis uniformly in [0, input - valid high end], the vacated voxels set to the sample's minimum (the
    padding value) and 0 in the label map; `valid_boxes` and `exact_boxes` move by the same offset."""

    def __init__(self, p_per_sample: float) -> None:
        self.p_per_sample = float(p_per_sample)

    def __call__(self, **batch: Any) -> dict:
        data, seg, valid = batch["data"], batch.get("seg"), batch.get("valid_boxes")
        if valid is None:
            return batch
        exact = batch.get("exact_boxes")
        shape = np.asarray(data.shape[2:])
        for sample in range(data.shape[0]):
            if not np.random.uniform() < self.p_per_sample:
                continue
            room = np.maximum(shape - np.ceil(np.asarray(valid[sample][3:])).astype(int), 0)
            offset = np.array([np.random.randint(0, r + 1) for r in room])
            if not offset.any():
                continue
            region = tuple(slice(0, int(n - o)) for n, o in zip(shape, offset))
            moved = tuple(slice(int(o), None) for o in offset)
            image = data[sample].copy()
            data[sample] = image.min()
            data[sample][(slice(None),) + moved] = image[(slice(None),) + region]
            if seg is not None:
                labels = seg[sample].copy()
                seg[sample] = 0
                seg[sample][(slice(None),) + moved] = labels[(slice(None),) + region]
            valid[sample] = np.asarray(valid[sample]) + np.concatenate([offset, offset])
            if exact is not None and exact[sample] is not None:
                corners, values = exact[sample]
                exact[sample] = (np.asarray(corners) + np.concatenate([offset, offset]), values)
        return batch


def affine_sampling_grid(matrix: np.ndarray, input_shape: Sequence[int],
                         output_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(grid, outside)` for `affine_resample`: grid_sample's normalised input position of every output voxel
    (`align_corners=True`: -1 and 1 are the first and last voxel centres; the last axis runs x, y, z), cut
    along the first output axis into one chunk per torch thread ([k, ceil(D / k), H, W, 3], the last chunk
    padded), because grid_sample's CPU kernel runs the batch entries in parallel, not the voxels of one; and
    `outside [D, H, W]`, the output voxels whose input position lies beyond the input's extent."""
    # index = c (u + 1) with c = (n - 1) / 2, the centre; input index - c_in = matrix (output index - c_out),
    # so u_in = A u_out with A = diag(1 / c_in) matrix diag(c_out): no shift, centre maps to centre
    scale_in = (np.asarray(input_shape, dtype=np.float64) - 1) / 2
    scale_out = (np.asarray(output_shape, dtype=np.float64) - 1) / 2
    linear = np.asarray(matrix, dtype=np.float64) * scale_out[None, :] / scale_in[:, None]
    theta = np.concatenate([linear[::-1, ::-1], np.zeros((3, 1))], axis=1)  # grid_sample's axes run x, y, z
    size = [int(n) for n in output_shape]
    grid = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32)[None], [1, 1, *size], align_corners=True)
    outside = (grid[0].abs() > 1 + 1e-6).any(dim=-1)
    chunks = max(1, min(torch.get_num_threads(), size[0]))
    depth = -(-size[0] // chunks)
    if depth * chunks > size[0]:
        grid = torch.cat([grid, grid[:, -1:].expand(1, depth * chunks - size[0], *size[1:], 3)], dim=1)
    return grid.reshape(chunks, depth, *size[1:], 3), outside


def affine_resample(images: np.ndarray, matrix: np.ndarray, output_shape: Sequence[int], order: int,
                    cvals: Sequence[float], grid: tuple[torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
    """`scipy.ndimage.affine_transform(image, matrix, offset, output_shape, order, mode="constant", cval)` of
    every channel of `images` [K, D, H, W], the offset placing the output centre on the input centre (input
    index = matrix (output index - c_out) + c_in, c = (n - 1) / 2), as float32 [K, *output_shape].

    Orders 0 and 1 run as torch's `grid_sample` (nearest / trilinear) on `grid` (`affine_sampling_grid`, made
    here when not given) with every thread of the process: on the CPU plan (96 x 64 x 96, 2 threads) 12 ms
    per sample for the image and its label map instead of about 36 ms with scipy. Outside the input's extent
    a channel takes its constant, as scipy's "constant" mode. Other orders (cubic) and axes of one voxel go
    through scipy."""
    images = np.asarray(images)
    output_shape = tuple(int(n) for n in output_shape)
    if order not in (0, 1) or min(images.shape[1:]) < 2 or min(output_shape) < 2:
        matrix = np.asarray(matrix, dtype=np.float64)
        offset = (np.asarray(images.shape[1:]) - 1) / 2 - matrix @ ((np.asarray(output_shape) - 1) / 2)
        return np.stack([ndimage.affine_transform(channel, matrix, offset=offset, output_shape=output_shape, output=np.float32,
                                                  order=order, mode="constant", cval=float(cval))
                         for channel, cval in zip(images, cvals)])
    sampling, outside = grid if grid is not None else affine_sampling_grid(matrix, images.shape[1:], output_shape)
    source = torch.as_tensor(np.ascontiguousarray(images, dtype=np.float32))[None].expand(sampling.shape[0], -1, -1, -1, -1)
    out = F.grid_sample(source, sampling, mode="nearest" if order == 0 else "bilinear", padding_mode="border", align_corners=True)
    out = out.transpose(0, 1).reshape(images.shape[0], -1, *output_shape[1:])[:, :output_shape[0]]
    for channel, cval in enumerate(cvals):
        out[channel].masked_fill_(outside, float(cval))
    return out.numpy()


class SpatialTransformPerSample(AbstractTransform):
    """Rotation, scaling and elastic deformation sample by sample, with the constant border value of each
    sample's own minimum (the padded background of a normalised CT).

    The parameters are drawn as batchgenerators' `augment_spatial` draws them (`p_el_per_sample`,
    `p_rot_per_sample` with one angle per axis, `p_scale_per_sample` with its "below or above 1 with equal
    chance" rule). A sample that draws none is passed through untouched. A rotated or scaled sample without
    elastic deformation is resampled with one affine map (`affine_resample`: scipy's affine_transform
    computed by torch's grid_sample), the same mapping as `augment_spatial`'s coordinate grid (input =
    s * R^T (output - centre) + centre, R = Rx Ry Rz), without building and rotating that grid; an elastic
    sample goes through `augment_spatial`. In a background worker the resampling uses one thread."""

    def __init__(self, patch_size: Sequence[int], **spatial_options: Any) -> None:
        self.patch_size = [int(s) for s in patch_size]
        self.options = spatial_options
        self._owner_pid = os.getpid()
        self._threads_limited = False

    def _draw(self) -> tuple[bool, np.ndarray | None]:
        """`(elastic, matrix)`: whether this sample is elastically deformed, else the 3 x 3 matrix of its
        rotation and scaling (None: neither was drawn)."""
        options = self.options
        if options.get("do_elastic_deform", False) and np.random.uniform() < options.get("p_el_per_sample", 1.0):
            return True, None
        matrix = None
        if options.get("do_rotation", False) and np.random.uniform() < options.get("p_rot_per_sample", 1.0):
            angles = [np.random.uniform(*options[key]) for key in ("angle_x", "angle_y", "angle_z")]
            rotation = create_matrix_rotation_z_3d(angles[2], create_matrix_rotation_y_3d(
                angles[1], create_matrix_rotation_x_3d(angles[0], np.identity(3))))
            matrix = rotation.T
        if options.get("do_scale", False) and np.random.uniform() < options.get("p_scale_per_sample", 1.0):
            low, high = options["scale"]
            factor = np.random.uniform(low, 1) if np.random.random() < 0.5 and low < 1 else np.random.uniform(max(low, 1), high)
            matrix = factor * (np.identity(3) if matrix is None else matrix)
        return False, matrix

    def _limit_threads_in_worker(self) -> None:
        """One torch thread in a background worker (another process than the one that built the pipeline):
        the trainer's threads have the cores."""
        if self._owner_pid != os.getpid() and not self._threads_limited:
            torch.set_num_threads(1)
            self._threads_limited = True

    def _transform(self, data: np.ndarray, seg: np.ndarray | None, elastic: bool,
                   matrix: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """One sample `data [1, C, ...]`, `seg [1, K, ...]` with the drawn `(elastic, matrix)` -> transformed arrays."""
        cval = float(data.min())
        if elastic:
            options = dict(self.options, p_el_per_sample=1.0)
            return augment_spatial(data, seg, self.patch_size, border_mode_data="constant", border_cval_data=cval,
                                   border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False, **options)
        matrix = np.identity(3) if matrix is None else matrix
        order = int(self.options.get("order_data", 3))
        self._limit_threads_in_worker()
        grid = affine_sampling_grid(matrix, data.shape[2:], self.patch_size) if min(data.shape[2:]) > 1 else None
        out_data = affine_resample(data[0], matrix, self.patch_size, order, [cval] * data.shape[1], grid)[None]
        out_seg = None if seg is None else affine_resample(seg[0], matrix, self.patch_size, 0, [0.0] * seg.shape[1], grid)[None]
        return out_data, out_seg

    def __call__(self, **batch: Any) -> dict:
        data, seg = batch["data"], batch.get("seg")
        valid = batch.get("valid_boxes")
        out_data = np.empty((data.shape[0], data.shape[1], *self.patch_size), dtype=np.float32)
        out_seg = None if seg is None else np.empty((seg.shape[0], seg.shape[1], *self.patch_size), dtype=np.float32)
        for sample in range(data.shape[0]):
            elastic, matrix = self._draw()
            if not elastic and matrix is None and list(data.shape[2:]) == self.patch_size:
                out_data[sample] = data[sample]  # untouched: same arrays, exact boxes and valid region
                if out_seg is not None:
                    out_seg[sample] = seg[sample]
                continue
            sample_seg = None if seg is None else seg[sample:sample + 1]
            if valid is not None:  # the valid (unpadded) region travels as an extra label channel
                mask = box_mask(valid[sample], data.shape[2:])[None, None]
                sample_seg = mask if sample_seg is None else np.concatenate([sample_seg, mask.astype(sample_seg.dtype)], axis=1)
            sample_data, sample_seg = self._transform(data[sample:sample + 1], sample_seg, elastic, matrix)
            out_data[sample] = sample_data[0]
            exact = batch.get("exact_boxes")
            if exact is not None and seg is not None and not np.array_equal(sample_seg[0, :seg.shape[1]], seg[sample]):
                exact[sample] = None  # moved: its boxes come from the augmented label map
            if valid is not None:
                valid[sample] = mask_box(sample_seg[0, -1], valid[sample])
                sample_seg = sample_seg[:, :-1]
            if out_seg is not None:
                out_seg[sample] = sample_seg[0]
        batch["data"] = out_data
        if out_seg is not None:
            batch["seg"] = out_seg
        return batch


def box_mask(box: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """float32 mask of `shape`, 1 inside the voxel corner box."""
    mask = np.zeros(tuple(int(s) for s in shape), dtype=np.float32)
    low = np.floor(np.asarray(box[:3])).astype(int)
    high = np.ceil(np.asarray(box[3:])).astype(int)
    mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = 1
    return mask


def mask_box(mask: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Voxel corner box of the non-zero voxels of `mask` (`fallback` if it is empty)."""
    found = np.nonzero(np.asarray(mask) > 0.5)
    if not found[0].size:
        return np.asarray(fallback)
    return np.asarray([a.min() for a in found] + [a.max() + 1 for a in found], dtype=np.float64)


def swap_table(lateral_pairs: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """Lookup table class index -> class index after a left-right mirror (pairs swapped)."""
    table = np.arange(max(num_classes + 1, 1 + max((max(p) for p in lateral_pairs), default=0)), dtype=np.int64)
    for left, right in lateral_pairs:
        table[int(left)], table[int(right)] = int(right), int(left)
    return table


class LateralMirrorTransform(AbstractTransform):
    """Flip each sample along its left-right axis with probability `p_per_sample`, swapping the lateral
    class pairs in the label map at the same time (see the module docstring).

    `batch["lr_axis"][b]` is sample b's left-right axis in the spatial axes (0..2); `batch["mirrored"]`
    records which samples were flipped."""

    def __init__(self, lateral_pairs: Sequence[Sequence[int]], num_classes: int, p_per_sample: float = 0.5,
                 default_axis: int = 2) -> None:
        self.table = swap_table(lateral_pairs, num_classes)
        self.p_per_sample = float(p_per_sample)
        self.default_axis = int(default_axis)

    def __call__(self, **batch: Any) -> dict:
        data, seg = batch["data"], batch.get("seg")
        axes = batch.get("lr_axis")
        mirrored = np.zeros(data.shape[0], dtype=bool)
        for sample in range(data.shape[0]):
            if not np.random.uniform() < self.p_per_sample:
                continue
            axis = int(axes[sample]) if axes is not None else self.default_axis
            data[sample] = np.flip(data[sample], axis=axis + 1).copy()
            if seg is not None:
                flipped = np.flip(seg[sample], axis=axis + 1)
                labels = np.rint(flipped).astype(np.int64)
                seg[sample] = self.table[np.clip(labels, 0, len(self.table) - 1)].astype(seg.dtype)
            mirrored[sample] = True
            exact = batch.get("exact_boxes")
            if exact is not None and exact[sample] is not None:
                corners, classes = exact[sample]
                exact[sample] = (mirror_boxes(corners, [axis], data.shape[2:]), self.table[np.asarray(classes, dtype=np.int64)])
            if batch.get("valid_boxes") is not None:
                batch["valid_boxes"][sample] = mirror_boxes(batch["valid_boxes"][sample], [axis], data.shape[2:])[0]
        batch["mirrored"] = mirrored
        return batch


class DetectionTargetsTransform(AbstractTransform):
    """Label map -> `seg [B, D, H, W]` int16 class indices, `target_boxes` (list of float32 [G, 6]
    normalised centre boxes relative to `input_size`) and `target_labels` (list of int64 [G] in 1..C),
    from the sample's `exact_boxes` where the spatial transform left it unchanged (see the module docstring);
    `valid_boxes` (voxel corners of each sample's unpadded region, moved by the spatial transform and the
    mirror) become normalised corners `[B, 6]`."""

    def __init__(self, input_size: Sequence[int], num_classes: int) -> None:
        self.input_size = tuple(int(s) for s in input_size)
        self.values = list(range(1, num_classes + 1))

    def __call__(self, **batch: Any) -> dict:
        seg = np.rint(np.asarray(batch["seg"])).astype(np.int16)
        if seg.ndim == 5:
            seg = seg[:, 0]
        boxes, labels = [], []
        exact = batch.get("exact_boxes") or [None] * len(seg)
        for sample, exact_boxes in zip(seg, exact):
            if exact_boxes is not None:
                corners, values = exact_boxes
                order = np.argsort(values, kind="stable")
                corners, values = np.asarray(corners)[order], np.asarray(values)[order]
            else:
                corners, values = boxes_from_label_map(sample, values=self.values)
            boxes.append(normalise_corners(corners, self.input_size).astype(np.float32).reshape(-1, 6))
            labels.append(values.astype(np.int64))
        batch["seg"] = seg
        if batch.get("valid_boxes") is not None:
            batch["valid_boxes"] = (np.asarray(batch["valid_boxes"], dtype=np.float64)
                                    / np.asarray(self.input_size * 2, dtype=np.float64)).astype(np.float32)
        batch["target_boxes"] = boxes
        batch["target_labels"] = labels
        return batch


def training_transforms(plans: dict, augment: bool = True) -> Compose:
    """The training pipeline of the module docstring (`augment=False`: targets only)."""
    planned = Plans.of(plans)
    options = planned.augmentation
    input_size = planned.input_size
    num_classes = planned.num_classes
    transforms: list[AbstractTransform] = []
    if augment and options["enabled"]:
        if float(options["p_fov_crop"]) > 0:
            transforms.append(FieldOfViewCropTransform(float(options["p_fov_crop"]), options["fov_crop_fraction"]))
        if float(options["p_shift"]) > 0:
            transforms.append(ShiftTransform(float(options["p_shift"])))
        in_plane = math.radians(float(options["rotation_degrees"]))
        out_of_plane = math.radians(float(options["rotation_degrees_out_of_plane"]))
        transforms.append(SpatialTransformPerSample(
            input_size,
            do_elastic_deform=float(options["p_elastic"]) > 0, alpha=tuple(options["elastic_alpha"]),
            sigma=tuple(options["elastic_sigma"]), p_el_per_sample=float(options["p_elastic"]),
            do_rotation=float(options["p_rotation"]) > 0, angle_x=(-in_plane, in_plane),
            angle_y=(-out_of_plane, out_of_plane), angle_z=(-out_of_plane, out_of_plane),
            p_rot_per_sample=float(options["p_rotation"]),
            do_scale=float(options["p_scale"]) > 0, scale=tuple(options["scale_range"]),
            p_scale_per_sample=float(options["p_scale"]), order_data=int(options["order_data"]),
        ))
        if float(options["p_mirror"]) > 0:
            transforms.append(LateralMirrorTransform(planned.lateral_pairs, num_classes, float(options["p_mirror"])))
        transforms += [
            GammaTransform(tuple(options["gamma_range"]), invert_image=False, per_channel=True, retain_stats=True,
                           p_per_sample=float(options["p_gamma"])),
            GaussianNoiseTransform(tuple(options["noise_variance"]), p_per_sample=float(options["p_noise"])),
            BrightnessMultiplicativeTransform(tuple(options["brightness_range"]), per_channel=True,
                                              p_per_sample=float(options["p_brightness"])),
            ContrastAugmentationTransform(tuple(options["contrast_range"]), preserve_range=True, per_channel=True,
                                          p_per_sample=float(options["p_contrast"])),
        ]
    transforms.append(DetectionTargetsTransform(input_size, num_classes))
    return Compose(transforms)

"""The one axis flip: sampling at a voxel centre returns that voxel, on non-cubic volumes."""
import itertools

import torch
import torch.nn.functional as F

from autodetr.model.deformable_attention import MultiScaleDeformableAttention3D
from autodetr.model.organ_detr import level_scales
from autodetr.model.sampling import multi_scale_deformable_sampling, sample_volume, to_grid_sample_coordinates

SHAPE = (5, 7, 11)


def index_volume(shape=SHAPE, channels: int = 1) -> torch.Tensor:
    """Voxel value encodes (channel, z, y, x) uniquely, so a swapped axis is caught."""
    d, h, w = shape
    z, y, x = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    base = (z * 10000 + y * 100 + x).double()
    return torch.stack([base + 1e6 * c for c in range(channels)])[None]  # [1, C, d, h, w]


def voxel_centres(shape=SHAPE) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    voxels = list(itertools.product(*(range(n) for n in shape)))
    points = torch.tensor([[(i + 0.5) / n for i, n in zip(v, shape)] for v in voxels], dtype=torch.float64)
    return points, voxels


def test_to_grid_sample_coordinates_flip_and_range():
    points = torch.tensor([[0.0, 0.5, 1.0], [0.25, 0.0, 0.75]])
    expected = torch.tensor([[1.0, 0.0, -1.0], [0.5, -1.0, -0.5]])
    torch.testing.assert_close(to_grid_sample_coordinates(points), expected)


def test_grid_sample_at_voxel_centre_returns_voxel_value():
    volume = index_volume()
    points, voxels = voxel_centres()
    grid = to_grid_sample_coordinates(points).reshape(1, -1, 1, 1, 3)
    sampled = F.grid_sample(volume, grid, mode="bilinear", align_corners=False).reshape(-1)
    expected = torch.tensor([volume[0, 0, z, y, x] for z, y, x in voxels], dtype=torch.float64)
    torch.testing.assert_close(sampled, expected)
    torch.testing.assert_close(sample_volume(volume, points[None])[0, 0], expected)


def test_multi_scale_deformable_sampling_at_voxel_centres():
    heads, head_dim, points_per_level = 2, 3, 2
    shapes = [SHAPE, (3, 4, 6)]
    values = [index_volume(s, channels=heads * head_dim).reshape(heads, head_dim, *s) + 7 * level for level, s in enumerate(shapes)]
    centres, voxels = voxel_centres(SHAPE)
    queries = centres.shape[0]
    locations = torch.zeros(1, queries, heads, 2, points_per_level, 3, dtype=torch.float64)
    locations[0, :, :, 0, :, :] = centres[:, None, None, :]  # level 0: the voxel centre
    locations[0, :, :, 1, :, :] = 0.5                        # level 1: anywhere, weight 0
    weights = torch.zeros(1, queries, heads, 2, points_per_level, dtype=torch.float64)
    weights[..., 0, :] = 1.0 / points_per_level
    out = multi_scale_deformable_sampling(values, locations, weights).reshape(queries, heads, head_dim)
    for q, (z, y, x) in enumerate(voxels):
        torch.testing.assert_close(out[q], values[0][:, :, z, y, x])


def test_deformable_attention_samples_the_reference_centre_voxel_with_level_scale():
    """Full module, zero offsets, identity projections: output = value at the reference box centre, for a
    level whose grid extends past the input (input 9 x 13 x 21, stride 2 -> level 5 x 7 x 11)."""
    input_shape, stride = (9, 13, 21), (2, 2, 2)
    module = MultiScaleDeformableAttention3D(dim=4, levels=1, heads=1, points=1).double()
    with torch.no_grad():
        module.sampling_offsets.bias.zero_()
        for proj in (module.value_proj, module.output_proj):
            proj.weight.copy_(torch.eye(4))
            proj.bias.zero_()
    value = index_volume(SHAPE, channels=4)
    scales = level_scales(input_shape, [SHAPE], [stride]).double()
    _, voxels = voxel_centres()
    centres = torch.tensor([[(i + 0.5) * s / n for i, s, n in zip(v, stride, input_shape)] for v in voxels], dtype=torch.float64)
    boxes = torch.cat([centres, torch.full_like(centres, 0.2)], dim=-1)[None]
    out = module(torch.zeros(1, len(voxels), 4, dtype=torch.float64), boxes, [value], scales)[0]
    expected = torch.stack([value[0, :, z, y, x] for z, y, x in voxels])
    torch.testing.assert_close(out, expected)


def test_sampling_offsets_scale_with_reference_box_size():
    module = MultiScaleDeformableAttention3D(dim=8, levels=1, heads=2, points=2)
    query = torch.randn(1, 3, 8)
    box = torch.tensor([[[0.5, 0.5, 0.5, 0.2, 0.4, 0.6]] * 3])
    locations = module.sampling_locations(query, box)
    offsets = (locations - box[:, :, None, None, None, :3]) / box[:, :, None, None, None, 3:]
    raw = module.sampling_offsets(query).reshape(1, 3, 2, 1, 2, 3) / 2 * 0.5
    torch.testing.assert_close(offsets, raw)

"""The fine decoder level projected after sampling equals sampling the projected map (values and gradients)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from autodetr.model.deformable_attention import MultiScaleDeformableAttention3D
from autodetr.model.projected_level import project_after_sampling


def test_projecting_after_sampling_equals_sampling_the_projected_map() -> None:
    """Conv 1x1x1 + GroupNorm of the whole map, then deformable sampling (points inside and outside the map)
    == the per-sample affine map applied to samples of the raw features: same output, same gradients for
    the features, the convolution and the norm."""
    torch.manual_seed(0)
    projection = nn.Sequential(nn.Conv3d(6, 16, 1), nn.GroupNorm(8, 16))
    nn.init.normal_(projection[1].weight, 1.0, 0.3)
    nn.init.normal_(projection[1].bias, 0.0, 0.3)
    features = (torch.randn(2, 6, 10, 8, 12) * 2 + 1).requires_grad_()
    attention = MultiScaleDeformableAttention3D(16, 2, 4, 3, projected_levels=1)
    nn.init.normal_(attention.sampling_offsets.weight, 0.0, 1.0)
    nn.init.normal_(attention.attention_weights.weight, 0.0, 0.5)
    coarse = torch.randn(2, 16, 5, 4, 6)
    query = torch.randn(2, 20, 16)
    boxes = torch.cat([torch.rand(2, 20, 3), torch.rand(2, 20, 3) + 0.5], dim=-1)  # large boxes: points fall outside
    scales = torch.ones(2, 3)
    parameters = [features, projection[0].weight, projection[0].bias, projection[1].weight, projection[1].bias]

    direct = attention(query, boxes, [coarse, projection(features)], scales)
    direct_grads = torch.autograd.grad(direct.square().sum(), parameters)
    after = attention(query, boxes, [coarse, project_after_sampling(projection, features)], scales)
    after_grads = torch.autograd.grad(after.square().sum(), parameters)

    torch.testing.assert_close(after, direct, atol=1e-5, rtol=1e-4)
    for found, expected in zip(after_grads, direct_grads):
        torch.testing.assert_close(found, expected, atol=1e-4, rtol=1e-3)


def test_project_after_sampling_refuses_other_projections() -> None:
    with pytest.raises(TypeError, match="1x1x1"):
        project_after_sampling(nn.Sequential(nn.Conv3d(4, 8, 3), nn.GroupNorm(4, 8)), torch.zeros(1, 4, 3, 3, 3))

"""MSA encoder: shapes kept for odd sizes, information flows top-down only, windows aligned by position."""
import itertools

import pytest
import torch

from autodetr.model.msa import MSAEncoder, coarse_window_index, window_counts, window_merge, window_partition, window_valid_mask

# (input shape, per-level cumulative strides coarsest first); level shapes are ceil(input / stride)
CASES = [
    ((11, 19, 27), [(4, 4, 4), (2, 2, 2), (1, 1, 1)]),   # 3x5x7, 6x10x14, 11x19x27
    ((5, 19, 27), [(2, 4, 4), (1, 2, 2), (1, 1, 1)]),    # anisotropic: 3x5x7, 5x10x14, 5x19x27
]


def level_inputs(input_shape, strides, dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [tuple(-(-n // s) for n, s in zip(input_shape, stride)) for stride in strides]
    return [torch.randn(1, dim, *shape, generator=generator) for shape in shapes]


def make_encoder(levels: int, depth: int = 2, position: str = "absolute") -> MSAEncoder:
    torch.manual_seed(0)
    return MSAEncoder(num_levels=levels, dim=12, patch_size=2, heads=3, depth=depth, ffn_dim=16, dropout=0.3, bias=False,
                      position=position).eval()


@pytest.mark.parametrize("input_shape,strides", CASES)
def test_output_shapes_equal_input_shapes(input_shape, strides):
    encoder = make_encoder(len(strides))
    features = level_inputs(input_shape, strides, 12)
    with torch.no_grad():
        outputs = encoder(features, strides, input_shape)
    assert [o.shape for o in outputs] == [f.shape for f in features]
    assert all(torch.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize("position", ["absolute", "window"])
@pytest.mark.parametrize("input_shape,strides", CASES)
def test_information_flows_top_down_only(input_shape, strides, position):
    encoder = make_encoder(len(strides), position=position)
    features = level_inputs(input_shape, strides, 12)
    with torch.no_grad():
        reference = encoder(features, strides, input_shape)
        for changed in range(1, len(features)):
            perturbed = [f.clone() for f in features]
            perturbed[changed] = perturbed[changed] + torch.randn_like(perturbed[changed])
            outputs = encoder(perturbed, strides, input_shape)
            for level in range(changed):  # every coarser level is bit-identical
                assert torch.equal(outputs[level], reference[level])
            for level in range(changed, len(features)):  # the changed level and the finer ones react
                assert not torch.allclose(outputs[level], reference[level])


def test_coarse_change_reaches_only_the_windows_at_the_same_position():
    """Cross-attention is local by position: perturbing one coarse window changes only the fine windows
    lying inside it (with one block, self-attention adds no spread beyond a window)."""
    input_shape, strides = (8, 8, 8), [(2, 2, 2), (1, 1, 1)]
    encoder = make_encoder(2, depth=1)
    features = level_inputs(input_shape, strides, 12)
    with torch.no_grad():
        reference = encoder(features, strides, input_shape)
        perturbed = [f.clone() for f in features]
        perturbed[0][..., 2:4, 0:2, 2:4] += 5.0  # coarse window (1, 0, 1) -> fine voxels [4:8, 0:4, 4:8]
        outputs = encoder(perturbed, strides, input_shape)
    changed = (outputs[1] - reference[1]).abs().amax(dim=1)[0] > 0
    expected = torch.zeros(8, 8, 8, dtype=torch.bool)
    expected[4:8, 0:4, 4:8] = True
    assert torch.equal(changed, expected)


def test_window_positions_make_the_encoder_independent_of_where_a_window_lies():
    """With `position="window"` the same content one coarsest window further along gives the same output
    there (Swin-like relative positions); the paper's absolute encoding does not."""
    input_shape, strides = (16, 16, 16), [(4, 4, 4), (2, 2, 2), (1, 1, 1)]
    shift = [2 * 4 // s[0] for s in strides]  # one window of the coarsest level, in each level's voxels
    for position, invariant in (("window", True), ("absolute", False)):
        encoder = make_encoder(3, position=position)
        features = level_inputs(input_shape, strides, 12)
        moved = [torch.roll(f, shifts=k, dims=2) for f, k in zip(features, shift)]
        with torch.no_grad():
            reference, outputs = encoder(features, strides, input_shape), encoder(moved, strides, input_shape)
        for level, k in enumerate(shift):  # windows away from the seam: the coarsest window count is 2
            same = torch.allclose(outputs[level][:, :, k:2 * k], reference[level][:, :, 0:k], atol=1e-5)
            assert same == invariant, (position, level)


@pytest.mark.parametrize("fine_shape,ratio", [((11, 19, 27), (2, 2, 2)), ((5, 10, 13), (1, 2, 4)), ((7, 7, 7), (2, 1, 2))])
def test_window_alignment_by_position(fine_shape, ratio):
    patch = 2
    coarse_shape = tuple(-(-n // r) for n, r in zip(fine_shape, ratio))
    fine_counts, coarse_counts = window_counts(fine_shape, patch), window_counts(coarse_shape, patch)
    index = coarse_window_index(fine_counts, coarse_counts, ratio)
    for voxel in itertools.product(*(range(n) for n in fine_shape)):
        fine_window = [v // patch for v in voxel]
        coarse_window = [(v // r) // patch for v, r in zip(voxel, ratio)]  # window of the coarse voxel at that position
        flat_fine = (fine_window[0] * fine_counts[1] + fine_window[1]) * fine_counts[2] + fine_window[2]
        flat_coarse = (coarse_window[0] * coarse_counts[1] + coarse_window[1]) * coarse_counts[2] + coarse_window[2]
        assert int(index[flat_fine]) == flat_coarse


def test_window_partition_roundtrip_and_mask():
    x = torch.randn(2, 3, 5, 7, 4)
    windows = window_partition(x, 2)
    assert windows.shape == (2, 2 * 3 * 4, 8, 4)
    torch.testing.assert_close(window_merge(windows, (3, 5, 7), 2), x)
    assert int(window_valid_mask((3, 5, 7), 2).sum()) == 3 * 5 * 7


def test_padded_tokens_are_masked_out_of_attention():
    """Level 3 x 3 x 3 with p = 2: the window at the high corner holds one real voxel and seven padded
    ones. With the padded keys masked, attention over the single valid key returns exactly its value
    projection, so the output there is computable by hand and independent of the padding."""
    encoder = make_encoder(1, depth=1)
    feature = torch.randn(1, 12, 3, 3, 3)
    with torch.no_grad():
        output = encoder([feature], [(1, 1, 1)], (3, 3, 3))[0]
        block = encoder.blocks[0].self_attention[0]
        x = feature[0, :, 2, 2, 2]
        y = block.norm1(x + block.attention.out(block.attention.v(x)))
        expected = block.norm2(y + block.ffn(y))
    torch.testing.assert_close(output[0, :, 2, 2, 2], expected, atol=1e-5, rtol=1e-5)


def test_batch_samples_are_independent():
    input_shape, strides = CASES[0]
    encoder = make_encoder(len(strides), depth=1)
    first = level_inputs(input_shape, strides, 12, seed=1)
    second = level_inputs(input_shape, strides, 12, seed=2)
    with torch.no_grad():
        alone = encoder(first, strides, input_shape)
        batched = encoder([torch.cat([a, b]) for a, b in zip(first, second)], strides, input_shape)
    for single, both in zip(alone, batched):
        torch.testing.assert_close(both[:1], single, atol=1e-5, rtol=1e-5)

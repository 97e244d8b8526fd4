"""MultiScale Attention (MSA) encoder of Organ-DETR (Sec. 3, Eq. 1-4).

Levels are ordered COARSEST FIRST: index 0 is P^(1), the highest-level map. Each level is cut into
non-overlapping p x p x p voxel windows (padded at the high end to a multiple of p; padded tokens are
masked out of every attention's keys and cropped at the end, so any size works, odd ones included).

One MSA block, for every level l (Eq. 1-4):
  X_0 = FFN(S_self(X^(l)))                        self-attention inside each window (Eq. 1-2)
  X_m = FFN(S_cross(X_{m-1}, X^(m))), m = 1..l-1   cross-attention to every coarser level (Eq. 3),
                                                   applied recursively from the coarsest (Eq. 4)
and the block's output for level l is X_{l-1} (X_0 for the coarsest level, which has no cross-attention).
Reading choices (the extracted formulas are garbled in places):
- Eq. 4's product is a composition: the query of the cross-attention to level m is the output of the
  cross-attention to level m - 1, starting at the coarsest level; keys/values are X^(m), the BLOCK INPUT
  of level m (Eq. 1/3 notation: X^(m) is the patch partition of the input map), so all levels of a
  block can be computed independently and information flows only top-down (a coarser level's output
  never depends on a finer level).
- Windows are aligned BY POSITION: fine window index a (per axis) lies inside coarse window a // r,
  r = stride_m / stride_l (the integer stride ratio of the two levels), so every fine window attends to
  the p^3 coarse tokens covering its physical location (not window a mod count).
- Every attention and every FFN (Linear-ReLU-Dropout-Linear-Dropout) is followed by residual + LayerNorm
  (post-norm). Queries and keys get the 3D sine encoding of their physical position (DETR style), values
  not. `position="absolute"` (the paper's reading) encodes the position in the network input;
  `position="window"` encodes it relative to the low corner of the window attended (for a cross-attention,
  the coarse window's corner for the fine queries and the coarse keys alike), as Swin's relative position
  bias makes window attention independent of where the window lies: the encoder then cannot tie a
  feature to an absolute input position, which a small training set invites it to learn by heart.
  The `bias` flag (paper: no bias) applies to the q/k/v projections, as Swin's qkv_bias.
- Parameters are separate per level (W^(l) in Eq. 1), per (l, m) cross-attention and per block (depth).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import FastDropout
from .position import level_coordinates, sine_encode, sine_position_encoding_3d

#: How the MSA encoder encodes token positions (module docstring).
POSITION_MODES = ("absolute", "window")

Triple = tuple[int, int, int]


def window_counts(shape: Sequence[int], patch: int) -> Triple:
    """Number of windows per axis after padding to a multiple of `patch`."""
    return tuple(math.ceil(int(n) / patch) for n in shape)  # type: ignore[return-value]


def window_partition(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Channels-last [B, D, H, W, C] -> windows [B, nD * nH * nW, p^3, C] (zero-padded at the high end)."""
    batch, depth, height, width, channels = x.shape
    nd, nh, nw = window_counts((depth, height, width), patch)
    x = F.pad(x, (0, 0, 0, nw * patch - width, 0, nh * patch - height, 0, nd * patch - depth))
    x = x.reshape(batch, nd, patch, nh, patch, nw, patch, channels).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(batch, nd * nh * nw, patch ** 3, channels)


def window_merge(windows: torch.Tensor, shape: Sequence[int], patch: int) -> torch.Tensor:
    """Inverse of `window_partition`: [B, nWin, p^3, C] -> channels-last [B, D, H, W, C] cropped to `shape`."""
    batch, _, _, channels = windows.shape
    nd, nh, nw = window_counts(shape, patch)
    x = windows.reshape(batch, nd, nh, nw, patch, patch, patch, channels).permute(0, 1, 4, 2, 5, 3, 6, 7)
    x = x.reshape(batch, nd * patch, nh * patch, nw * patch, channels)
    return x[:, : shape[0], : shape[1], : shape[2]]


def window_valid_mask(shape: Sequence[int], patch: int, device=None) -> torch.Tensor:
    """[nWin, p^3] bool, True for tokens inside the (unpadded) level."""
    ones = torch.ones(1, *[int(n) for n in shape], 1, device=device)
    return window_partition(ones, patch)[0, ..., 0] > 0


def coarse_window_index(fine_counts: Sequence[int], coarse_counts: Sequence[int], ratio: Sequence[int], device=None) -> torch.Tensor:
    """For each fine window (flat index), the flat index of the coarse window at the same position.

    Per axis: fine window a covers fine voxels [a p, (a + 1) p) = coarse voxels [a p / r, (a + 1) p / r),
    which lie inside coarse window a // r (r = integer stride ratio); clamped for safety.
    """
    axes = [
        torch.clamp(torch.arange(n_fine, device=device) // int(r), max=int(n_coarse) - 1)
        for n_fine, n_coarse, r in zip(fine_counts, coarse_counts, ratio)
    ]
    iz, iy, ix = torch.meshgrid(*axes, indexing="ij")
    return ((iz * coarse_counts[1] + iy) * coarse_counts[2] + ix).reshape(-1)


class WindowAttention(nn.Module):
    """Multi-head attention between a window of queries and a window of keys (Eq. 2 and Eq. 3).

    softmax(Q K^T / sqrt(d_head)) V per head via `scaled_dot_product_attention`; invalid (padded) keys masked.
    """

    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.k = nn.Linear(dim, dim, bias=bias)
        self.v = nn.Linear(dim, dim, bias=bias)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, nWin, T, C] -> [B * nWin, heads, T, C / heads] (4D keeps SDPA on its fused CPU kernel)."""
        batch, windows, tokens, dim = x.shape
        return x.reshape(batch * windows, tokens, self.heads, dim // self.heads).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_valid: torch.Tensor | None = None,
        gather_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query [B, nWin, T, C]; key/value [B, nWin_kv, S, C]; key_valid [nWin_kv, S] bool or None;
        gather_index [nWin] picks the key window of each query window (cross-attention). -> [B, nWin, T, C]."""
        batch, windows, tokens, dim = query.shape
        k, v = self.k(key), self.v(value)
        mask = key_valid if key_valid is not None and not bool(key_valid.all()) else None
        if gather_index is not None:
            k = k.index_select(1, gather_index)
            v = v.index_select(1, gather_index)
            if mask is not None:
                mask = mask.index_select(0, gather_index)
        if mask is not None:
            mask = mask.repeat(batch, 1)[:, None, None, :]  # [B * nWin, 1, 1, S]
        out = F.scaled_dot_product_attention(self._split(self.q(query)), self._split(k), self._split(v), attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, windows, tokens, dim)
        return self.out(out)


class FeedForward(nn.Module):
    """The MSA FFN: Linear -> ReLU -> Dropout -> Linear -> Dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), FastDropout(dropout), nn.Linear(hidden, dim), FastDropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttentionFFN(nn.Module):
    """One attention followed by an FFN, each with residual + LayerNorm (post-norm)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.attention = WindowAttention(dim, heads, bias)
        self.dropout = FastDropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x, x_pos, source, source_pos, source_valid, gather_index=None) -> torch.Tensor:
        attended = self.attention(x + x_pos, source + source_pos, source, source_valid, gather_index)
        x = self.norm1(x + self.dropout(attended))
        return self.norm2(x + self.ffn(x))


class MSABlock(nn.Module):
    """One depth step of MSA for all levels: self-attention (Eq. 2) then recursive cross-attention (Eq. 3-4)."""

    def __init__(self, num_levels: int, dim: int, heads: int, ffn_dim: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.self_attention = nn.ModuleList(AttentionFFN(dim, heads, ffn_dim, dropout, bias) for _ in range(num_levels))
        # cross_attention[l][m]: level l (finer) attends to coarser level m < l
        self.cross_attention = nn.ModuleList(
            nn.ModuleList(AttentionFFN(dim, heads, ffn_dim, dropout, bias) for _ in range(level)) for level in range(num_levels)
        )

    def forward(self, windows, self_positions, cross_positions, valids, gather) -> list[torch.Tensor]:
        """`self_positions[l]`: encoding of level l's tokens for its self-attention; `cross_positions[l][m]`:
        (query encoding, key encoding) of level l's cross-attention to level m (broadcast over windows)."""
        outputs = []
        for level, x in enumerate(windows):
            pos, valid = self_positions[level], valids[level]
            x = self.self_attention[level](x, pos, x, pos, valid)
            for coarser in range(level):  # m = 1 .. l - 1 of Eq. 4, coarsest first
                query_pos, key_pos = cross_positions[level][coarser]
                x = self.cross_attention[level][coarser](
                    x, query_pos, windows[coarser], key_pos, valids[coarser], gather[level][coarser]
                )
            outputs.append(x)
        return outputs


class MSAEncoder(nn.Module):
    """MSA encoder: `depth` MSA blocks over L_h levels (coarsest first); outputs keep every level's shape."""

    def __init__(self, num_levels: int, dim: int, patch_size: int, heads: int, depth: int, ffn_dim: int, dropout: float, bias: bool,
                 position: str = "absolute") -> None:
        super().__init__()
        if position not in POSITION_MODES:
            raise ValueError(f"network.msa.position must be one of {POSITION_MODES}, got '{position}'")
        self.patch = int(patch_size)
        self.dim = dim
        self.position = position
        self.blocks = nn.ModuleList(MSABlock(num_levels, dim, heads, ffn_dim, dropout, bias) for _ in range(depth))

    def forward(self, features: Sequence[torch.Tensor], strides: Sequence[Sequence[int]], input_shape: Sequence[int]) -> list[torch.Tensor]:
        """features: [B, C, d_l, h_l, w_l] per level (coarsest first); strides: cumulative stride per level;
        input_shape: the network input's (D, H, W). Returns maps of the same shapes."""
        patch, device = self.patch, features[0].device
        shapes = [tuple(f.shape[2:]) for f in features]
        counts = [window_counts(s, patch) for s in shapes]
        windows = [window_partition(f.permute(0, 2, 3, 4, 1), patch) for f in features]
        valids = [window_valid_mask(s, patch, device) for s in shapes]
        gather = [
            [
                coarse_window_index(counts[fine], counts[coarse], [a // b for a, b in zip(strides[coarse], strides[fine])], device)
                for coarse in range(fine)
            ]
            for fine in range(len(features))
        ]
        if self.position == "absolute":
            positions = [
                window_partition(sine_position_encoding_3d(s, st, input_shape, self.dim, device=device, dtype=features[0].dtype)[None], patch)
                for s, st in zip(shapes, strides)
            ]
            self_positions = positions
            cross_positions = [[(positions[fine], positions[coarse]) for coarse in range(fine)] for fine in range(len(features))]
        else:
            self_positions, cross_positions = self._window_positions(shapes, strides, input_shape, counts, gather, features[0].dtype, device)
        for block in self.blocks:
            windows = block(windows, self_positions, cross_positions, valids, gather)
        return [window_merge(w, s, patch).permute(0, 4, 1, 2, 3).contiguous() for w, s in zip(windows, shapes)]

    def _window_positions(self, shapes, strides, input_shape, counts, gather, dtype, device):
        """Encodings of `position="window"` (module docstring): a level's tokens relative to their own
        window's low corner (the same `[1, 1, p^3, C]` for every window), and for a cross-attention from
        level l to level m the level-l tokens relative to the low corner of the level-m window each
        level-l window attends (`[1, nWin_l, p^3, C]`), with level m's own window-relative encoding."""
        patch = self.patch
        local = []
        for stride in strides:
            coordinates = level_coordinates((patch,) * 3, stride, input_shape, device)
            local.append(window_partition(sine_encode(coordinates, self.dim)[None].to(dtype), patch))
        cross = []
        for fine, (shape, stride) in enumerate(zip(shapes, strides)):
            absolute = window_partition(level_coordinates(shape, stride, input_shape, device)[None], patch)[0]  # [nWin, T, 3]
            row = []
            for coarse in range(fine):
                step = torch.as_tensor([patch * s / n for s, n in zip(strides[coarse], input_shape)], device=device)
                grid = torch.stack(torch.meshgrid(*[torch.arange(n, device=device) for n in counts[coarse]], indexing="ij"), -1)
                corners = grid.reshape(-1, 3).float() * step  # [nWin_m, 3] low corner of each level-m window
                relative = absolute - corners.index_select(0, gather[fine][coarse])[:, None, :]
                row.append((sine_encode(relative, self.dim)[None].to(dtype), local[coarse]))
            cross.append(row)
        return local, cross

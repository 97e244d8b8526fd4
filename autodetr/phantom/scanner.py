"""What the scanner adds to the painted volume: Gaussian noise, then an in-plane Gaussian blur
(reconstruction kernel / partial volume), with the noise scaled so that its std after the blur is the one asked."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def kernel_gain(sigma: float) -> float:
    """Factor by which a 1D Gaussian filter of `sigma` voxels scales the std of white noise."""
    delta = np.zeros(64)
    delta[32] = 1
    return float(np.sqrt((ndimage.gaussian_filter1d(delta, sigma) ** 2).sum()))


def add_blurred_noise(hu: np.ndarray, inplane_spacing: float, blur_mm: float, noise_std: float,
                      rng: np.random.Generator) -> None:
    """Add noise whose std after the in-plane blur of `blur_mm` is `noise_std` HU, then blur, in place."""
    sigma = max(blur_mm / inplane_spacing, 0.45)
    pre_std = np.float32(noise_std / kernel_gain(sigma) ** 2)
    for start in range(0, hu.shape[0], 16):
        block = hu[start:start + 16]
        block += rng.standard_normal(block.shape, dtype=np.float32) * pre_std
    blurred = ndimage.gaussian_filter1d(hu, sigma, axis=1, mode="nearest")
    ndimage.gaussian_filter1d(blurred, sigma, axis=2, output=hu, mode="nearest")

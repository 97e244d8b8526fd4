"""How a structure looks: Hounsfield values painted into the voxels it occupies."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special


@dataclass
class Context:
    """What a painter may look at besides the mask: the level field, voxel axes (mm) and a generator."""

    level: np.ndarray  # level field over the region (<= 1 inside the shape)
    axes: tuple[np.ndarray, np.ndarray, np.ndarray]  # (z, y, x) voxel centres of the region, mm
    spacing: tuple[float, float, float]
    rng: np.random.Generator


def smooth_field(context: Context, mask: np.ndarray, wavelength: tuple[float, float], waves: int = 8) -> np.ndarray:
    """A smooth random field (about unit variance) at the voxels of `mask`: a sum of random plane waves."""
    index = np.nonzero(mask)
    points = [context.axes[axis][index[axis]].astype(np.float32) for axis in range(3)]
    direction = context.rng.normal(size=(waves, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    wave = direction * (2 * np.pi / context.rng.uniform(*wavelength, size=(waves, 1)))
    phase = context.rng.uniform(0, 2 * np.pi, size=waves)
    field = np.zeros(len(points[0]), dtype=np.float32)
    for k in range(waves):
        field += np.cos(points[0] * np.float32(wave[k, 0]) + points[1] * np.float32(wave[k, 1])
                        + points[2] * np.float32(wave[k, 2]) + np.float32(phase[k]))
    return field * np.float32(np.sqrt(2.0 / waves))


class Painter:
    def paint(self, hu: np.ndarray, mask: np.ndarray, context: Context) -> None:
        """Write HU values into `hu` (a view of the region) where `mask` is set."""
        raise NotImplementedError


@dataclass
class Uniform(Painter):
    """A constant value, optionally with a faint smooth texture (std `texture` HU, blobs of 15-40 mm)."""

    value: float
    texture: float = 0.0

    def paint(self, hu: np.ndarray, mask: np.ndarray, context: Context) -> None:
        if self.texture:
            hu[mask] = self.value + self.texture * smooth_field(context, mask, (15.0, 40.0))
        else:
            hu[mask] = self.value


@dataclass
class Parenchyma(Painter):
    """An organ of the randomised phantom (`autodetr.phantom.randomised`): a value with a smooth texture of
    std `texture` HU and wavelength `wavelength` mm, a cortex (`cortex`: the value of the outer shell where
    the level exceeds `cortex_level`, as a kidney's cortex in the arterial phase), vessels (thin tubes where
    two smooth fields are both near zero, of `vessel` HU) and lesions (`lesion`: blobs of that HU covering
    about `lesion_fraction` of the organ, e.g. cysts, metastases or stones)."""

    value: float
    texture: float = 0.0
    wavelength: tuple[float, float] = (15.0, 40.0)
    cortex: float | None = None
    cortex_level: float = 0.75
    vessel: float | None = None
    vessel_width: float = 0.1
    lesion: float | None = None
    lesion_fraction: float = 0.0

    def paint(self, hu: np.ndarray, mask: np.ndarray, context: Context) -> None:
        values = np.full(int(mask.sum()), self.value, dtype=np.float32)
        if self.texture:
            values += np.float32(self.texture) * smooth_field(context, mask, self.wavelength)
        if self.cortex is not None:
            values[context.level[mask] > self.cortex_level] = self.cortex
        if self.vessel is not None:
            first = smooth_field(context, mask, (25.0, 60.0), waves=6)
            second = smooth_field(context, mask, (25.0, 60.0), waves=6)
            values[(np.abs(first) < self.vessel_width) & (np.abs(second) < self.vessel_width * 3)] = self.vessel
        if self.lesion is not None and self.lesion_fraction > 0:
            blobs = smooth_field(context, mask, (10.0, 30.0)) > special.ndtri(1 - self.lesion_fraction)
            values[blobs] = self.lesion
        hu[mask] = values


@dataclass
class Bone(Painter):
    """Cortical shell (about `shell_mm` thick, at least one voxel in-plane) brighter than cancellous bone."""

    cortical: float
    cancellous: float
    shell_mm: float = 2.0

    def paint(self, hu: np.ndarray, mask: np.ndarray, context: Context) -> None:
        inside = (context.level <= 1).view(np.uint8)
        reach = [max(int(round(self.shell_mm / s)), 0) for s in context.spacing]
        reach[1], reach[2] = max(reach[1], 1), max(reach[2], 1)
        core = ndimage.minimum_filter(inside, size=[2 * r + 1 for r in reach], mode="nearest")
        hu[mask] = np.where(core[mask] > 0, self.cancellous, self.cortical)


@dataclass
class Hollow(Painter):
    """Wall around a content (for tube chains: level = distance / radius).

    The content is fluid, with air in front of `air_level_y` (anterior, non-dependent side when
    supine) if given, and with gas pockets (`bubbles`: fraction of the content) and a mottled texture
    (`mottle`: std in HU) mixed in, as in stool.
    """

    wall: float
    content: float
    wall_fraction: float = 0.15
    air_level_y: float | None = None
    bubbles: float = 0.0
    mottle: float = 0.0

    def paint(self, hu: np.ndarray, mask: np.ndarray, context: Context) -> None:
        level = context.level
        content = mask & (level < 1 - self.wall_fraction)
        hu[mask & ~content] = self.wall
        values = np.full(int(content.sum()), self.content, dtype=np.float32)
        if self.mottle:
            values += self.mottle * smooth_field(context, content, (6.0, 14.0))
        if self.bubbles:
            gas = smooth_field(context, content, (6.0, 16.0)) > special.ndtri(1 - self.bubbles)
            values[gas] = -950.0
        if self.air_level_y is not None:
            y = np.broadcast_to(context.axes[1][None, :, None], level.shape)[content]
            values[y < self.air_level_y] = -1000.0
        hu[content] = values

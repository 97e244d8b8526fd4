"""Smooth implicit shapes, rasterised on a voxel grid only inside their bounding region.

Every coordinate here is a physical position in mm in numpy axis order `(z, y, x)` of the patient
frame (x = patient left, y = posterior, z = superior; LPS). A shape's `level(z, y, x)` is a field that
is <= 1 inside the shape and grows outside it; unions take the minimum, differences the maximum.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def zyx(x: float, y: float, z: float) -> np.ndarray:
    """A point given by patient-frame names, returned in array-axis order (z, y, x)."""
    return np.array([z, y, x], dtype=np.float64)


def rotation(about_z: float = 0.0, about_y: float = 0.0, about_x: float = 0.0) -> np.ndarray:
    """Rotation matrix (array-axis order) from angles in degrees about the patient z, y and x axes.

    The columns are the shape's local axes expressed in the patient frame.
    """
    a, b, c = np.deg2rad([about_z, about_y, about_x])
    # Rotations written in (x, y, z) order, then permuted to (z, y, x).
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    xyz = rz @ ry @ rx
    order = [2, 1, 0]
    return xyz[np.ix_(order, order)]


def frame(axis0: np.ndarray, axis1_hint: np.ndarray) -> np.ndarray:
    """Orthonormal frame (columns) whose first local axis is `axis0`, the second close to `axis1_hint`."""
    first = np.asarray(axis0, dtype=np.float64)
    first = first / np.linalg.norm(first)
    second = np.asarray(axis1_hint, dtype=np.float64) - first * np.dot(axis1_hint, first)
    second = second / np.linalg.norm(second)
    third = np.cross(first, second)
    return np.stack([first, second, third], axis=1)


_SHAPES = ((-1, 1, 1), (1, -1, 1), (1, 1, -1))


class Separable:
    """A field f(z, y, x) = a(z) + b(y) + c(x) kept as three 1D arrays: linear algebra on coordinates stays
    cheap, and `full()` builds the 3D array only where a non-linear step needs it."""

    __slots__ = ("terms",)

    def __init__(self, terms: list[np.ndarray | float]):
        self.terms = terms

    @classmethod
    def axis(cls, values: np.ndarray, dim: int) -> "Separable":
        terms: list[np.ndarray | float] = [0.0, 0.0, 0.0]
        terms[dim] = np.asarray(values, dtype=np.float32).reshape(_SHAPES[dim])
        return cls(terms)

    def __add__(self, other: "Separable | float") -> "Separable":
        if isinstance(other, Separable):
            return Separable([a + b for a, b in zip(self.terms, other.terms)])
        return Separable([self.terms[0] + np.float32(other), self.terms[1], self.terms[2]])

    __radd__ = __add__

    def __sub__(self, other: "Separable | float") -> "Separable":
        return self + other * -1.0

    def __mul__(self, factor: float) -> "Separable":
        return Separable([t * np.float32(factor) for t in self.terms])

    __rmul__ = __mul__

    def full(self) -> np.ndarray:
        """The field as an array broadcastable to the region (3D only if it depends on all axes)."""
        a, b, c = self.terms
        return np.asarray((a + b) + c, dtype=np.float32)


@dataclass
class SmoothDeformation:
    """Low-frequency displacement field, additive and separable: d_i(p) = sum_j f_ij(p_j).

    Each f_ij is a sum of a few sinusoids, so the field costs a handful of 1D evaluations; the terms
    f_ii are kept gentle (|f_ii'| < 0.5) so that the mapping stays one-to-one along each axis.
    """

    amplitude: np.ndarray  # [3, 3, modes] mm
    frequency: np.ndarray  # [3, 3, modes] rad / mm
    phase: np.ndarray  # [3, 3, modes] rad

    @classmethod
    def random(cls, rng: np.random.Generator, amplitude_mm: float, wavelength_mm: tuple[float, float] = (70.0, 180.0),
               modes: int = 2) -> "SmoothDeformation":
        shape = (3, 3, modes)
        frequency = 2 * np.pi / rng.uniform(*wavelength_mm, size=shape)
        amplitude = rng.uniform(0.3, 1.0, size=shape) * amplitude_mm / np.sqrt(3 * modes)
        diagonal = np.arange(3)
        amplitude[diagonal, diagonal] = np.minimum(amplitude[diagonal, diagonal],
                                                   0.45 / modes / frequency[diagonal, diagonal])
        return cls(amplitude, frequency, rng.uniform(0, 2 * np.pi, size=shape))

    @property
    def margin(self) -> float:
        """Largest displacement the field can produce, in mm."""
        return float(np.abs(self.amplitude).sum(axis=(1, 2)).max())

    def apply(self, axes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[Separable, Separable, Separable]:
        """Displaced coordinates p + d(p) over the grid spanned by 1D axes (z, y, x), still separable."""
        result = []
        for i in range(3):
            terms = []
            for j in range(3):
                term = (self.amplitude[i, j, :, None] * np.sin(self.frequency[i, j, :, None] * axes[j][None, :]
                                                               + self.phase[i, j, :, None])).sum(axis=0)
                if i == j:
                    term = term + axes[j]
                terms.append(term.astype(np.float32).reshape(_SHAPES[j]))
            result.append(Separable(terms))
        return tuple(result)


class Shape:
    """A region given by a level field (<= 1 inside)."""

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Conservative (low, high) corners in mm, (z, y, x)."""
        raise NotImplementedError

    def level(self, z: Separable, y: Separable, x: Separable) -> np.ndarray:
        """Level at the grid points whose (possibly deformed) coordinates are z, y, x."""
        raise NotImplementedError


@dataclass
class Superquadric(Shape):
    """Superellipsoid with optional taper: ((|u/a|^e + |v/b|^e)^(f/e) + |w/c|^f) <= 1 in local axes.

    `semi_axes` are along the local axes (columns of `orientation`); local axis 0 is the "axial" one
    with exponent `axial_exponent`. `taper` = (axis, amount) scales the two other semi-axes down
    linearly towards the + end of that local axis (amount 0.5: half as thick there).
    """

    centre: np.ndarray
    semi_axes: np.ndarray
    orientation: np.ndarray = field(default_factory=lambda: np.eye(3))
    plane_exponent: float = 2.0
    axial_exponent: float = 2.0
    taper: tuple[int, float] | None = None

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        extent = np.abs(self.orientation) @ np.asarray(self.semi_axes, dtype=np.float64) * 1.05
        return self.centre - extent, self.centre + extent

    def level(self, z: Separable, y: Separable, x: Separable) -> np.ndarray:
        coords = (z, y, x)
        rot = self.orientation
        scaled = []
        for k in range(3):  # local coordinate / semi-axis: still separable, zero terms skipped
            terms = [(coords[i] - float(self.centre[i])) * (rot[i, k] / self.semi_axes[k])
                     for i in range(3) if abs(rot[i, k]) > 1e-9]
            scaled.append(sum(terms[1:], terms[0]).full())
        if self.taper is not None:
            axis, amount = self.taper
            factor = 1 - np.float32(amount) * np.clip((scaled[axis] + 1) * 0.5, 0, 1)
            scaled = [s if k == axis else s / factor for k, s in enumerate(scaled)]
        if self.plane_exponent == 2.0 and self.axial_exponent == 2.0:
            return (scaled[0] * scaled[0] + scaled[1] * scaled[1]) + scaled[2] * scaled[2]
        e, f = np.float32(self.plane_exponent), np.float32(self.axial_exponent)
        plane = np.abs(scaled[1]) ** e + np.abs(scaled[2]) ** e
        return plane ** (f / e) + np.abs(scaled[0]) ** f


@dataclass
class TubeChain(Shape):
    """Union of tapered capsules between consecutive centre points; level = distance / local radius."""

    points: np.ndarray  # [K, 3] (z, y, x) mm
    radii: np.ndarray  # [K] mm

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        points, radii = np.asarray(self.points), np.asarray(self.radii)
        return (points - radii[:, None]).min(axis=0), (points + radii[:, None]).max(axis=0)

    def level(self, z: Separable, y: Separable, x: Separable) -> np.ndarray:
        result = None
        coords = (z, y, x)
        for k in range(len(self.points) - 1):
            start, end = np.asarray(self.points[k], dtype=np.float64), np.asarray(self.points[k + 1], dtype=np.float64)
            r0, r1 = float(self.radii[k]), float(self.radii[k + 1])
            direction = end - start
            length2 = max(float(direction @ direction), 1e-9)
            rel = [coords[i] - float(start[i]) for i in range(3)]
            t = np.clip(sum((rel[i] * (direction[i] / length2) for i in range(1, 3)), rel[0] * (direction[0] / length2)).full(), 0, 1)
            distance2 = None
            for i in range(3):
                offset = rel[i].full() - t * np.float32(direction[i])
                distance2 = offset * offset if distance2 is None else distance2 + offset * offset
            radius = np.float32(r0) + t * np.float32(r1 - r0)
            segment = np.sqrt(distance2) / radius
            result = segment if result is None else np.minimum(result, segment)
        return result


@dataclass
class Slab(Shape):
    """Everything with low <= z <= high (a half-space when high is infinite)."""

    low: float
    high: float = 1e4

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([self.low, -1e4, -1e4]), np.array([self.high, 1e4, 1e4])

    def level(self, z: Separable, y: Separable, x: Separable) -> np.ndarray:
        height = z.full()
        return np.where((height >= self.low) & (height <= self.high), np.float32(0), np.float32(2))


@dataclass
class Union(Shape):
    parts: list[Shape]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lows, highs = zip(*(part.bounds() for part in self.parts))
        return np.min(lows, axis=0), np.max(highs, axis=0)

    def level(self, z: Separable, y: Separable, x: Separable) -> np.ndarray:
        result = self.parts[0].level(z, y, x)
        for part in self.parts[1:]:
            result = np.minimum(result, part.level(z, y, x))
        return result


@dataclass
class Difference(Shape):
    """`keep` minus `remove` (the boundary of the removed part is where its level is 1)."""

    keep: Shape
    remove: Shape

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.keep.bounds()

    def level(self, z: Separable, y: Separable, x: Separable) -> np.ndarray:
        return np.maximum(self.keep.level(z, y, x), 2 - self.remove.level(z, y, x))


@dataclass(frozen=True)
class Grid:
    """Voxel grid in the patient frame: voxel (i, j, k) has its centre at origin + (i, j, k) * spacing."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (z, y, x) mm
    origin: tuple[float, float, float]  # (z, y, x) mm, centre of voxel 0

    def axis(self, dim: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.shape[dim] if stop is None else stop
        return self.origin[dim] + np.arange(start, stop, dtype=np.float64) * self.spacing[dim]

    def region(self, low: np.ndarray, high: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Voxels whose centres lie inside [low, high] (mm), or None when that is outside the grid."""
        result = []
        for dim in range(3):
            first = int(np.ceil((low[dim] - self.origin[dim]) / self.spacing[dim]))
            last = int(np.floor((high[dim] - self.origin[dim]) / self.spacing[dim])) + 1
            first, last = max(first, 0), min(last, self.shape[dim])
            if last <= first:
                return None
            result.append(slice(first, last))
        return tuple(result)

    def region_axes(self, region: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(self.axis(dim, region[dim].start, region[dim].stop) for dim in range(3))


def _parts(shape: Shape) -> list[Shape] | None:
    """Sub-shapes whose union is `shape` (for evaluating each only inside its own box), or None."""
    if isinstance(shape, Union):
        return shape.parts
    if isinstance(shape, TubeChain) and len(shape.points) > 2:
        return [TubeChain(shape.points[k:k + 2], shape.radii[k:k + 2]) for k in range(len(shape.points) - 1)]
    return None


def _level_on_axes(shape: Shape, axes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Level field on the grid spanned by 1D axes; unions are evaluated part by part inside each part's box."""
    parts = _parts(shape)
    shape_3d = tuple(len(a) for a in axes)
    if parts is None:
        coords = [Separable.axis(axes[dim], dim) for dim in range(3)]
        return np.broadcast_to(shape.level(*coords), shape_3d)
    result = np.full(shape_3d, np.inf, dtype=np.float32)
    for part in parts:
        low, high = part.bounds()
        sub = []
        for dim in range(3):
            first = int(np.searchsorted(axes[dim], low[dim], side="left"))
            last = int(np.searchsorted(axes[dim], high[dim], side="right"))
            if last <= first:
                break
            sub.append(slice(first, last))
        if len(sub) < 3:
            continue
        sub_axes = tuple(axes[dim][sub[dim]] for dim in range(3))
        np.minimum(result[tuple(sub)], _level_on_axes(part, sub_axes), out=result[tuple(sub)])
    return result


def evaluate(shape: Shape, grid: Grid, deformation: SmoothDeformation | None = None
             ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Level field of `shape` (deformed by `deformation`) inside its bounding region of `grid`."""
    low, high = shape.bounds()
    margin = deformation.margin if deformation is not None else 0.0
    region = grid.region(low - margin, high + margin)
    if region is None:
        return None
    axes = grid.region_axes(region)
    if deformation is None:
        return region, _level_on_axes(shape, axes)
    level = shape.level(*deformation.apply(axes))
    return region, np.broadcast_to(level, tuple(s.stop - s.start for s in region))


def extent(shape: Shape, deformation: SmoothDeformation | None = None, step: float = 3.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """Actual (low, high) corners (mm) of a shape, measured on a coarse grid of `step` mm."""
    low, high = shape.bounds()
    margin = deformation.margin if deformation is not None else 0.0
    low, high = low - margin - step, high + margin + step
    grid = Grid(tuple(int(n) for n in np.ceil((high - low) / step) + 1), (step, step, step), tuple(low))
    found = evaluate(shape, grid, deformation)
    if found is None or not np.any(found[1] <= 1):
        return (low + high) / 2, (low + high) / 2
    region, level = found
    inside = level <= 1
    corners = []
    for axis in range(3):
        occupied = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        axis_values = grid.axis(axis, region[axis].start, region[axis].stop)
        corners.append((axis_values[occupied[0]] - step / 2, axis_values[occupied[-1]] + step / 2))
    return np.array([c[0] for c in corners]), np.array([c[1] for c in corners])


@dataclass
class Stretched(Shape):
    """`inner` scaled per axis by `factors` about `anchor`, then moved by `shift` (all (z, y, x), mm): a point p
    is inside when `anchor + (p - shift - anchor) / factors` is inside `inner`. Linear per axis, so the
    coordinates stay separable. Used to vary an organ's size and height (`autodetr.phantom.variation`)."""

    inner: Shape
    anchor: np.ndarray
    factors: np.ndarray
    shift: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def _outward(self, point: np.ndarray) -> np.ndarray:
        return self.anchor + (np.asarray(point, dtype=np.float64) - self.anchor) * self.factors + self.shift

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        low, high = self.inner.bounds()
        return self._outward(low), self._outward(high)

    def level(self, z: Separable, y: Separable, x: Separable) -> np.ndarray:
        coords = [(c - float(self.shift[i] + self.anchor[i])) * (1.0 / float(self.factors[i])) + float(self.anchor[i])
                  for i, c in enumerate((z, y, x))]
        return self.inner.level(*coords)

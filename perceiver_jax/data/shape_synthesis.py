"""Synthetic 3-D shapes as point clouds: points drawn uniformly (by area) from a surface.

`random_shape_cloud(rng, shape, n)` returns float32 [n, 3]: the surface of `shape` with
random proportions, stretched by a random factor in [0.8, 1.25] per axis, turned about the
up (z) axis by a random angle and tilted by up to 10 degrees, with Gaussian noise of 1% of
the shape's size added, then centred and fitted to the unit cube
(point_cloud_augment.fit_unit_cube) as the ModelNet40 builder stores real objects.

Shapes (SHAPES, the class order of the synthetic dataset) and their random proportions:
  sphere        radius 1
  cube          side 2 (a box once stretched)
  cylinder      radius 1, height in [0.6, 2.0], with both caps
  cone          base radius 1, height in [0.8, 2.0], with its base
  torus         tube radius / ring radius in [0.2, 0.5]
  pyramid       square base of side 2, height in [0.8, 2.0]
  octahedron    vertices at +-1 on each axis
  tetrahedron   regular, inscribed in the unit sphere
"""

from __future__ import annotations

import numpy as np

from perceiver_jax.data.point_cloud_augment import fit_unit_cube, rotation_about_z

SHAPES = ('sphere', 'cube', 'cylinder', 'cone', 'torus', 'pyramid', 'octahedron',
          'tetrahedron')
NOISE = 0.01      # std of the Gaussian noise, relative to the shape's size (about 2)
MAX_TILT = np.deg2rad(10.0)


def sample_triangles(rng: np.random.Generator, vertices: np.ndarray, faces: np.ndarray,
                     n: int) -> np.ndarray:
  """n points uniform over the area of a triangle mesh: vertices [V, 3], faces [F, 3] int."""
  tri = vertices[faces]  # [F, 3, 3]
  areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
  which = rng.choice(len(faces), size=n, p=areas / areas.sum())
  u, v = rng.random((2, n))
  flip = u + v > 1.0  # fold the unit square onto the triangle
  u, v = np.where(flip, 1.0 - u, u), np.where(flip, 1.0 - v, v)
  t = tri[which]
  return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def _cube() -> tuple[np.ndarray, np.ndarray]:
  v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
  quads = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4),
           (1, 3, 7, 5)]
  return v, np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])


def _pyramid(height: float) -> tuple[np.ndarray, np.ndarray]:
  v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0], [0, 0, height]], np.float64)
  return v, np.array([(0, 1, 2), (0, 2, 3), (0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 0, 4)])


def _octahedron() -> tuple[np.ndarray, np.ndarray]:
  v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
               np.float64)
  return v, np.array([(x, y, z) for x in (0, 1) for y in (2, 3) for z in (4, 5)])


def _tetrahedron() -> tuple[np.ndarray, np.ndarray]:
  v = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], np.float64) / np.sqrt(3)
  return v, np.array([(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)])


def _disk(rng, n: int, z: float) -> np.ndarray:
  r, a = np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n)
  return np.stack([r * np.cos(a), r * np.sin(a), np.full(n, z)], axis=1)


def _cylinder(rng, n: int, height: float) -> np.ndarray:
  # Side area 2 pi h, each cap pi: pick the part of each point by area.
  part = rng.choice(3, size=n, p=np.array([2 * height, 1.0, 1.0]) / (2 * height + 2))
  a = rng.uniform(0, 2 * np.pi, n)
  side = np.stack([np.cos(a), np.sin(a), rng.uniform(-height / 2, height / 2, n)], axis=1)
  return np.where((part == 0)[:, None], side,
                  np.where((part == 1)[:, None], _disk(rng, n, height / 2),
                           _disk(rng, n, -height / 2)))


def _cone(rng, n: int, height: float) -> np.ndarray:
  side_area, base_area = np.pi * np.sqrt(1 + height ** 2), np.pi
  on_side = rng.random(n) < side_area / (side_area + base_area)
  t = np.sqrt(rng.random(n))  # distance from the apex, uniform by area
  a = rng.uniform(0, 2 * np.pi, n)
  side = np.stack([t * np.cos(a), t * np.sin(a), height / 2 - t * height], axis=1)
  return np.where(on_side[:, None], side, _disk(rng, n, -height / 2))


def _torus(rng, n: int, tube: float) -> np.ndarray:
  # Area element (1 + tube cos v): rejection-sample the tube angle v.
  v = np.empty(0)
  while v.size < n:
    cand = rng.uniform(0, 2 * np.pi, 2 * n)
    keep = rng.random(2 * n) < (1 + tube * np.cos(cand)) / (1 + tube)
    v = np.concatenate([v, cand[keep]])
  v, u = v[:n], rng.uniform(0, 2 * np.pi, n)
  ring = 1 + tube * np.cos(v)
  return np.stack([ring * np.cos(u), ring * np.sin(u), tube * np.sin(v)], axis=1)


def canonical_surface(rng: np.random.Generator, shape: str, n: int) -> np.ndarray:
  """n points on the surface of `shape` (random proportions), float64 [n, 3]."""
  if shape == 'sphere':
    p = rng.normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)
  if shape == 'cube':
    return sample_triangles(rng, *_cube(), n)
  if shape == 'cylinder':
    return _cylinder(rng, n, rng.uniform(0.6, 2.0))
  if shape == 'cone':
    return _cone(rng, n, rng.uniform(0.8, 2.0))
  if shape == 'torus':
    return _torus(rng, n, rng.uniform(0.2, 0.5))
  if shape == 'pyramid':
    return sample_triangles(rng, *_pyramid(rng.uniform(0.8, 2.0)), n)
  if shape == 'octahedron':
    return sample_triangles(rng, *_octahedron(), n)
  if shape == 'tetrahedron':
    return sample_triangles(rng, *_tetrahedron(), n)
  raise ValueError(f'Unknown synthetic shape {shape!r}; use one of {SHAPES}.')


def random_shape_cloud(rng: np.random.Generator, shape: str, n: int) -> np.ndarray:
  """float32 [n, 3]: a randomly proportioned, stretched, turned and noisy `shape`."""
  p = canonical_surface(rng, shape, n) * rng.uniform(0.8, 1.25, size=(1, 3))
  tilt_axis = rng.uniform(0, 2 * np.pi)
  tilt = rng.uniform(0, MAX_TILT)
  # Tilt = rotate about z to the tilt axis, about x by the tilt, and back.
  c, s = np.cos(tilt), np.sin(tilt)
  about_x = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
  to_axis = rotation_about_z(tilt_axis).astype(np.float64)
  turn = rotation_about_z(rng.uniform(0, 2 * np.pi)).astype(np.float64)
  p = p @ (turn @ to_axis @ about_x @ to_axis.T).T
  p = p + rng.normal(scale=NOISE * 2.0, size=p.shape)  # 1% of a size of about 2
  return fit_unit_cube(p)

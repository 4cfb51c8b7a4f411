"""Lens distortion (CameraInfo ``D``) and the one remap from raw camera pixels to model pixels.

Models, as ROS ``sensor_msgs/CameraInfo.distortion_model`` names them (OpenCV's formulas):

* ``plumb_bob`` (k1, k2, p1, p2, k3): radial ``1 + k1 r^2 + k2 r^4 + k3 r^6`` and tangential;
* ``rational_polynomial`` (k1, k2, p1, p2, k3, k4, k5, k6): radial
  ``(1 + k1 r^2 + k2 r^4 + k3 r^6) / (1 + k4 r^2 + k5 r^4 + k6 r^6)`` and tangential;
* ``equidistant`` (k1, k2, k3, k4): fisheye, ``theta_d = theta (1 + k1 theta^2 + ... + k4
  theta^8)`` with ``theta = atan(r)`` (``cv2.fisheye``).

An empty or all-zero ``D`` is a pinhole. Coordinates here are "normalized": ``(x, y) = (X/Z, Y/Z)``
of a point in the optical frame; ``distort`` maps ideal to distorted normalized coordinates (the
lens), ``undistort`` inverts it (Gauss-Newton, to 1e-12).

The model never sees a distorted image: :func:`remap_table` builds, once per (calibration, raw
size, decoded size, model size), the map from every model-input pixel to the raw (or reduced-scale
decoded) image, so undistortion into an ideal pinhole ``K'`` and the resize are one ``cv2.remap``.
``K'`` is ``K`` resized to the model input (same field of view and principal point), so every
later step (the in-graph ray embedding, the teacher's projection, the index) is plain pinhole.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from rsd_drive.geometry import resize_intrinsics

DISTORTION_MODELS = {'plumb_bob': 5, 'rational_polynomial': 8, 'equidistant': 4}
PINHOLE_NAMES = ('', 'none', 'pinhole')


class DistortionError(ValueError):
    """An unusable distortion model or coefficient vector; ``reason`` is a counter key."""

    reason = 'bad_distortion'


@dataclass(frozen=True)
class Distortion:
    """A lens model: ``model`` (a DISTORTION_MODELS key, or 'none') and its coefficients."""

    model: str = 'none'
    coeffs: tuple = ()

    @classmethod
    def from_camera_info(cls, model: str, D) -> 'Distortion':
        """Validated distortion from CameraInfo fields (``distortion_model``, ``d``)."""
        name = str(model or '').strip().lower()
        values = tuple(float(v) for v in (D if D is not None else ()))
        if not all(math.isfinite(v) for v in values):
            raise DistortionError(f'non-finite distortion coefficients {list(values)}')
        if not any(values):
            return cls()  # pinhole, whatever the name says
        if name in PINHOLE_NAMES:
            raise DistortionError(f'distortion model {model!r} with non-zero D {list(values)}')
        n = DISTORTION_MODELS.get(name)
        if n is None:
            raise DistortionError(f'unsupported distortion model {model!r}; supported: '
                                  f'{sorted(DISTORTION_MODELS)}')
        if name == 'plumb_bob' and len(values) == 4:
            values += (0.0,)  # k3 left out
        if len(values) != n:
            raise DistortionError(f'{name} needs {n} coefficients, got {len(values)}')
        return cls(name, values)

    @property
    def is_pinhole(self) -> bool:
        return self.model == 'none' or not any(self.coeffs)

    def distort(self, xy: np.ndarray) -> np.ndarray:
        """Ideal normalized [M,2] -> distorted normalized [M,2]."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if self.is_pinhole:
            return xy.copy()
        x, y = xy[:, 0], xy[:, 1]
        r2 = x * x + y * y
        if self.model == 'equidistant':
            k1, k2, k3, k4 = self.coeffs
            r = np.sqrt(r2)
            theta = np.arctan(r)
            t2 = theta * theta
            theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
            with np.errstate(divide='ignore', invalid='ignore'):
                scale = np.where(r > 1e-12, theta_d / r, 1.0)
            return xy * scale[:, None]
        c = self.coeffs
        k1, k2, p1, p2, k3 = c[:5]
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        if self.model == 'rational_polynomial':
            k4, k5, k6 = c[5:8]
            radial = radial / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return np.stack([xd, yd], axis=-1)

    def undistort(self, xy_d: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Distorted normalized [M,2] -> ideal normalized [M,2] (Gauss-Newton on distort)."""
        target = np.asarray(xy_d, dtype=np.float64).reshape(-1, 2)
        if self.is_pinhole:
            return target.copy()
        xy = target.copy()
        eps = 1e-7
        for _ in range(iterations):
            f = self.distort(xy) - target
            if np.max(np.abs(f), initial=0.0) < 1e-13:
                break
            jx = (self.distort(xy + [eps, 0.0]) - self.distort(xy - [eps, 0.0])) / (2 * eps)
            jy = (self.distort(xy + [0.0, eps]) - self.distort(xy - [0.0, eps])) / (2 * eps)
            a, b, c, d = jx[:, 0], jy[:, 0], jx[:, 1], jy[:, 1]
            det = a * d - b * c
            det = np.where(np.abs(det) < 1e-12, 1e-12, det)
            xy[:, 0] -= (d * f[:, 0] - b * f[:, 1]) / det
            xy[:, 1] -= (-c * f[:, 0] + a * f[:, 1]) / det
        return xy


PINHOLE = Distortion()


def _normalized(uv: np.ndarray, K: np.ndarray) -> np.ndarray:
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    K = np.asarray(K, dtype=np.float64)
    y = (uv[:, 1] - K[1, 2]) / K[1, 1]
    x = (uv[:, 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    return np.stack([x, y], axis=-1)


def _pixels(xy: np.ndarray, K: np.ndarray) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    return np.stack([K[0, 0] * xy[:, 0] + K[0, 1] * xy[:, 1] + K[0, 2],
                     K[1, 1] * xy[:, 1] + K[1, 2]], axis=-1)


def undistort_pixels(uv: np.ndarray, K: np.ndarray, distortion: Distortion | None) -> np.ndarray:
    """Raw (distorted) pixels [M,2] -> where the same rays hit an ideal pinhole camera with the
    same ``K``: after this, every pinhole function (rays, ground intersection) is exact."""
    if distortion is None or distortion.is_pinhole:
        return np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    return _pixels(distortion.undistort(_normalized(uv, K)), K)


def distort_pixels(uv: np.ndarray, K: np.ndarray, distortion: Distortion | None) -> np.ndarray:
    """Ideal pinhole pixels [M,2] (``K``) -> where the lens puts them in the raw image."""
    if distortion is None or distortion.is_pinhole:
        return np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    return _pixels(distortion.distort(_normalized(uv, K)), K)


def project_points_distorted(points_cam: np.ndarray, K: np.ndarray,
                             distortion: Distortion | None):
    """[M,3] optical-frame points -> (raw pixels [M,2], depth [M]) through the lens."""
    p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    with np.errstate(divide='ignore', invalid='ignore'):
        xy = p[:, :2] / p[:, 2:3]
    d = distortion if distortion is not None else PINHOLE
    return _pixels(d.distort(xy), K), p[:, 2]


# -- the remap table ------------------------------------------------------------------------------
def reduced_scale(raw_hw, out_hw, allowed=(8, 4, 2)) -> int:
    """The largest libjpeg DCT scale denominator (8, 4, 2, else 1) that keeps the decoded image at
    least as large as the model input in both axes (decode at 1/s, then remap)."""
    h, w = int(raw_hw[0]), int(raw_hw[1])
    for s in allowed:
        if h // s >= out_hw[0] and w // s >= out_hw[1]:
            return int(s)
    return 1


def reduced_size(hw, scale: int) -> tuple[int, int]:
    """(height, width) at 1/``scale``, rounding up (libjpeg's DCT scaling, cv2.resize)."""
    return -(-int(hw[0]) // scale), -(-int(hw[1]) // scale)


@dataclass(frozen=True)
class RemapTable:
    """``cv2.remap`` maps from model-input pixels into a source image of ``src_hw`` (the raw image
    decoded at 1/``scale``), and ``K_out``: the ideal pinhole at the model input size."""

    map1: np.ndarray
    map2: np.ndarray
    K_out: np.ndarray
    src_hw: tuple
    out_hw: tuple
    scale: int
    identity: bool  # the source is already the model input (no remap needed)

    def apply(self, src: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
        """Remap ``src`` (src_hw, any channel count) into ``dst`` (out_hw), written in place."""
        if src.shape[:2] != self.src_hw:
            raise ValueError(f'remap table built for {self.src_hw}, image is {src.shape[:2]}')
        if self.identity:
            if dst is None:
                return src.copy()
            np.copyto(dst, src)
            return dst
        return cv2.remap(src, self.map1, self.map2, cv2.INTER_LINEAR, dst=dst,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def build_remap(K: np.ndarray, distortion: Distortion | None, raw_hw, out_hw,
                scale: int = 1) -> RemapTable:
    """The map of one camera: model pixel -> ideal ray (``K'``) -> lens -> raw pixel -> pixel of
    the image decoded at 1/``scale`` (libjpeg DCT scaling: decoded pixel j covers raw pixels
    [j*s, (j+1)*s); sizes round up, as libjpeg's and cv2.resize's)."""
    raw_hw, out_hw, scale = tuple(int(v) for v in raw_hw), tuple(int(v) for v in out_hw), \
        int(scale)
    src_hw = reduced_size(raw_hw, scale)
    K = np.asarray(K, dtype=np.float64)
    K_out = resize_intrinsics(K, raw_hw, out_hw)
    dist = distortion if distortion is not None else PINHOLE
    if dist.is_pinhole and src_hw == out_hw:
        empty = np.zeros((0,), np.float32)
        return RemapTable(empty, empty, K_out, src_hw, out_hw, scale, True)
    vv, uu = np.mgrid[0:out_hw[0], 0:out_hw[1]].astype(np.float64)
    uv = np.stack([uu.ravel(), vv.ravel()], axis=-1)
    raw = _pixels(dist.distort(_normalized(uv, K_out)), K)
    ratio = np.array([src_hw[1] / raw_hw[1], src_hw[0] / raw_hw[0]])
    src = (raw + 0.5) * ratio - 0.5
    map_x = src[:, 0].reshape(out_hw).astype(np.float32)
    map_y = src[:, 1].reshape(out_hw).astype(np.float32)
    map1, map2 = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)
    return RemapTable(map1, map2, K_out, src_hw, out_hw, scale, False)


class RemapCache:
    """Remap tables keyed by (K, distortion, raw size, model size, scale); built once each."""

    def __init__(self, max_entries: int = 64):
        self.max_entries = int(max_entries)
        self._tables = OrderedDict()
        self._lock = threading.Lock()
        self.built = 0

    def get(self, K, distortion, raw_hw, out_hw, scale: int = 1) -> RemapTable:
        dist = distortion if distortion is not None else PINHOLE
        key = (np.asarray(K, dtype=np.float64).tobytes(), dist.model, dist.coeffs,
               tuple(raw_hw), tuple(out_hw), int(scale))
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
        table = build_remap(K, dist, raw_hw, out_hw, scale)
        with self._lock:
            self._tables[key] = table
            self.built += 1
            while len(self._tables) > self.max_entries:
                self._tables.popitem(last=False)
        return table


REMAP_CACHE = RemapCache()


def undistort_resize(image: np.ndarray, K: np.ndarray, distortion: Distortion | None,
                     out_hw) -> tuple[np.ndarray, np.ndarray]:
    """A full-resolution HxWxC image -> (model-input image through the cached remap, K').

    The image is first box-reduced (INTER_AREA, like libjpeg's DCT scaling of the JPEG path) by
    the largest factor of 2, 4, 8 that keeps it at least the model size, then undistorted and
    resized by one remap: the same two steps as the node's fast path."""
    h, w = image.shape[:2]
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    s = reduced_scale((h, w), out_hw)
    if s > 1:
        image = cv2.resize(image, reduced_size((h, w), s)[::-1], interpolation=cv2.INTER_AREA)
    table = REMAP_CACHE.get(K, distortion, (h, w), out_hw, s)
    return table.apply(np.ascontiguousarray(image)), table.K_out

"""Frames, camera models and the BEV grid shared by the teacher, the model and the node.

Conventions (REP-103/105): ``base_link`` has x forward, y left, z up, origin on the ground below
the rear axle. Cameras use the optical frame (z forward, x right, y down). ``cam_to_ego`` is the
4x4 transform taking optical-frame points into ``base_link``. ``K`` is the 3x3 pinhole matrix for
the image size it is used with.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Rotation taking a camera *body* frame (x forward, y left, z up) to its *optical* frame.
OPTICAL_FROM_BODY = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


@dataclass
class GridSpec:
    """A BEV grid in ``base_link``, laid out like ``nav_msgs/OccupancyGrid``.

    Column index grows with x (forward), row index with y (left); cell (0, 0) has its lower corner
    at (origin_x, origin_y). The teacher's labels and the RiskHead's output share this definition.
    """

    rows: int = 64
    cols: int = 64
    resolution: float = 0.75
    origin_x: float = -12.0
    origin_y: float = -24.0

    def __post_init__(self):
        if self.rows <= 0 or self.cols <= 0:
            raise ValueError(f'grid rows/cols must be positive, got {self.rows}x{self.cols}')
        if self.resolution <= 0:
            raise ValueError(f'grid resolution must be positive, got {self.resolution}')

    @property
    def x_max(self) -> float:
        return self.origin_x + self.cols * self.resolution

    @property
    def y_max(self) -> float:
        return self.origin_y + self.rows * self.resolution

    def to_dict(self) -> dict:
        return asdict(self)

    def cell_of(self, x, y):
        """Integer (row, col) of points; cells outside the grid are -1."""
        col = np.floor((np.asarray(x, dtype=np.float64) - self.origin_x) / self.resolution)
        row = np.floor((np.asarray(y, dtype=np.float64) - self.origin_y) / self.resolution)
        inside = (col >= 0) & (col < self.cols) & (row >= 0) & (row < self.rows)
        return (np.where(inside, row, -1).astype(np.int64),
                np.where(inside, col, -1).astype(np.int64))

    def cell_centers(self):
        """(x, y) arrays of shape [rows, cols] with every cell's centre in metres."""
        xs = self.origin_x + (np.arange(self.cols) + 0.5) * self.resolution
        ys = self.origin_y + (np.arange(self.rows) + 0.5) * self.resolution
        return np.meshgrid(xs, ys, indexing='xy')

    def resampled_centers(self, rows: int, cols: int):
        """(x, y) arrays [rows, cols] of the centres of a rows x cols lattice over this grid's
        extent (the BEV query grid of the model). Each axis is divided by its own cell count,
        so the lattice covers the grid whatever its aspect ratio (its cells need not be square).
        """
        if rows <= 0 or cols <= 0:
            raise ValueError(f'lattice rows/cols must be positive, got {rows}x{cols}')
        xs = self.origin_x + (np.arange(cols) + 0.5) * (self.x_max - self.origin_x) / cols
        ys = self.origin_y + (np.arange(rows) + 0.5) * (self.y_max - self.origin_y) / rows
        return np.meshgrid(xs, ys, indexing='xy')

    def resized(self, rows: int, cols: int) -> 'GridSpec':
        """Same extent with a different cell count. Cells stay square, so the new counts must
        keep the grid's aspect ratio (rows / cols); otherwise use :meth:`resampled_centers`."""
        if rows <= 0 or cols <= 0:
            raise ValueError(f'grid rows/cols must be positive, got {rows}x{cols}')
        res_x = self.cols * self.resolution / cols
        res_y = self.rows * self.resolution / rows
        if not np.isclose(res_x, res_y, rtol=1e-9, atol=0.0):
            raise ValueError(
                f'resizing a {self.rows}x{self.cols} grid to {rows}x{cols} would need cells of '
                f'{res_x:g} m (x) by {res_y:g} m (y); GridSpec cells are square')
        return GridSpec(rows=rows, cols=cols, resolution=res_x, origin_x=self.origin_x,
                        origin_y=self.origin_y)


def quaternion_to_matrix(qx: float, qy: float, qz: float, qw: float) -> np.ndarray:
    """3x3 rotation matrix of a unit quaternion (normalised here to absorb rounding)."""
    q = np.array([qw, qx, qy, qz], dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f'invalid quaternion {(qx, qy, qz, qw)}')
    w, x, y, z = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(R: np.ndarray):
    """(qx, qy, qz, qw) of a 3x3 rotation matrix."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        qw, qx = 0.25 * s, (R[2, 1] - R[1, 2]) / s
        qy, qz = (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        qw, qx = (R[2, 1] - R[1, 2]) / s, 0.25 * s
        qy, qz = (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s
    elif R[1, 1] > R[2, 2]:
        s = np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        qw, qx = (R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s
        qy, qz = 0.25 * s, (R[1, 2] + R[2, 1]) / s
    else:
        s = np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        qw, qx = (R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s
        qy, qz = (R[1, 2] + R[2, 1]) / s, 0.25 * s
    return float(qx), float(qy), float(qz), float(qw)


def make_transform(R: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def camera_to_ego(x: float, y: float, z: float, yaw: float, pitch: float = 0.0,
                  roll: float = 0.0) -> np.ndarray:
    """``cam_to_ego`` of a camera mounted at (x, y, z) looking along ``yaw`` (left positive),
    tilted down by ``pitch`` and rolled by ``roll`` radians about its viewing axis (right-handed
    about the camera body's x forward: positive lifts the image's left side)."""
    c, s = np.cos(pitch), np.sin(pitch)
    pitch_down = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    c, s = np.cos(roll), np.sin(roll)
    roll_x = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    body_to_ego = yaw_matrix(yaw) @ pitch_down @ roll_x
    return make_transform(body_to_ego @ OPTICAL_FROM_BODY.T, (x, y, z))


MOUNT_KEYS = ('x', 'y', 'z', 'yaw', 'pitch', 'roll')
POSE_KEYS = ('x', 'y', 'z', 'qx', 'qy', 'qz', 'qw')


def extrinsics_to_matrix(values) -> np.ndarray:
    """cam_to_ego from a mount ``[x, y, z, yaw, pitch(, roll)]`` (metres, radians; see
    :func:`camera_to_ego`) or the optical frame's pose ``[x, y, z, qx, qy, qz, qw]`` (calibrated
    rigs). A mapping with those keys works too (mount keys may be left out: 0)."""
    if isinstance(values, dict):
        unknown = set(values) - set(MOUNT_KEYS) - set(POSE_KEYS)
        if unknown:
            raise ValueError(f'extrinsics: unknown keys {sorted(unknown)}; a mount has '
                             f'{list(MOUNT_KEYS)}, a pose {list(POSE_KEYS)}')
        quat = [k for k in ('qx', 'qy', 'qz', 'qw') if k in values]
        if quat:
            if len(quat) != 4 or set(values) & {'yaw', 'pitch', 'roll'}:
                raise ValueError(f'extrinsics: a pose needs all of {list(POSE_KEYS)} and no '
                                 f'yaw/pitch/roll, got {sorted(values)}')
            values = [float(values.get(k, 0.0)) for k in POSE_KEYS]
        else:
            values = [float(values.get(k, 0.0)) for k in MOUNT_KEYS]
    values = [float(v) for v in values]
    if len(values) in (5, 6):
        return camera_to_ego(*values)
    if len(values) != 7:
        raise ValueError(f'extrinsics: expected 5 or 6 (mount) or 7 (pose) values, '
                         f'got {len(values)}')
    x, y, z, qx, qy, qz, qw = values
    return make_transform(quaternion_to_matrix(qx, qy, qz, qw), (x, y, z))


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def resize_intrinsics(K: np.ndarray, src_hw, dst_hw) -> np.ndarray:
    """Pinhole matrix for the same camera after resizing the image from src_hw to dst_hw."""
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    K2 = np.array(K, dtype=np.float64, copy=True)
    K2[0, 0] *= sx
    K2[0, 2] = (K2[0, 2] + 0.5) * sx - 0.5
    K2[1, 1] *= sy
    K2[1, 2] = (K2[1, 2] + 0.5) * sy - 0.5
    return K2


def project_points(points_ego: np.ndarray, K: np.ndarray, cam_to_ego: np.ndarray):
    """Project [M,3] base_link points into the image: returns (uv [M,2], depth [M])."""
    ego_to_cam = np.linalg.inv(cam_to_ego)
    p = np.asarray(points_ego, dtype=np.float64) @ ego_to_cam[:3, :3].T + ego_to_cam[:3, 3]
    depth = p[:, 2]
    with np.errstate(divide='ignore', invalid='ignore'):
        uv = (p @ np.asarray(K).T)[:, :2] / depth[:, None]
    return uv, depth


def pixel_rays(uv: np.ndarray, K: np.ndarray, cam_to_ego: np.ndarray):
    """Rays through pixels: (origin [3], unit directions [M,3]) in base_link."""
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    ones = np.ones((uv.shape[0], 1))
    d_cam = np.concatenate([uv, ones], axis=1) @ np.linalg.inv(K).T
    d = d_cam @ np.asarray(cam_to_ego)[:3, :3].T
    return np.asarray(cam_to_ego)[:3, 3].copy(), d / np.linalg.norm(d, axis=1, keepdims=True)


def ground_points_from_pixels(uv: np.ndarray, K: np.ndarray, cam_to_ego: np.ndarray,
                              ground_z: float = 0.0, max_range: float = 200.0):
    """Intersect pixel rays with the ground plane z = ground_z.

    Returns [M,2] (x, y) in base_link; NaN where the ray does not hit the ground within
    ``max_range`` metres (pixels on or above the horizon).
    """
    origin, d = pixel_rays(uv, K, cam_to_ego)
    with np.errstate(divide='ignore', invalid='ignore'):
        s = (ground_z - origin[2]) / d[:, 2]
    ok = (d[:, 2] < -1e-6) & (s > 0) & (s < max_range)
    xy = origin[None, :2] + s[:, None] * d[:, :2]
    xy[~ok] = np.nan
    return xy
